"""Run several fairseq-train command lines in one process (``python train_many.py ARGV.json``).

The session fixtures train five tiny dense models; one interpreter pays fairseq's
import time once instead of five times. Each run is fairseq-train's own ``main``.
"""

import json
import sys


def main(path):
    from fairseq import distributed_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    for argv in json.load(open(path)):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, argv)
        distributed_utils.call_main(convert_namespace_to_omegaconf(args), train.main)


if __name__ == "__main__":
    main(sys.argv[1])
