"""``python -m fairseq_taskmoe.upcycle``: same as ``fairseq-taskmoe-upcycle``."""

from fairseq_taskmoe.upcycle.cli import cli_main

if __name__ == "__main__":
    cli_main()
