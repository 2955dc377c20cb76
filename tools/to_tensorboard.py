"""A run's log.jsonl as TensorBoard events, for those who like its plots (pip install tensorboard).

    python tools/to_tensorboard.py out/cyclegan     # -> out/cyclegan/tensorboard
    tensorboard --logdir out/cyclegan/tensorboard

Run it again as the run goes on: it writes the events anew each time.
"""
import argparse, json, os, shutil, sys

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('out_dir', help="a run's --out_dir, which holds log.jsonl")
    args = p.parse_args(argv)
    log = os.path.join(args.out_dir, 'log.jsonl')
    if not os.path.isfile(log):
        sys.exit(f"error: {log}: no such file; name a run's --out_dir")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        sys.exit("error: the tensorboard package is not installed: pip install tensorboard")
    folder = os.path.join(args.out_dir, 'tensorboard')
    shutil.rmtree(folder, ignore_errors=True)  # its own output of an earlier call, made anew
    writer = SummaryWriter(folder)
    with open(log) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for record in records:
        for k, v in record.items():
            if k != 'step' and isinstance(v, (int, float)):
                writer.add_scalar(k, v, record['step'])
    writer.close()
    print(f"wrote {len(records)} records of {log} into {folder}")

if __name__ == '__main__':
    main()
