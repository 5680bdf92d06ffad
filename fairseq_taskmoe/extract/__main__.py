"""``python -m fairseq_taskmoe.extract``: same as ``fairseq-taskmoe-extract``."""

from fairseq_taskmoe.extract.cli import cli_main

if __name__ == "__main__":
    cli_main()
