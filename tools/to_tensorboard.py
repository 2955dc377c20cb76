"""A run's log.jsonl as TensorBoard events, for those who like its plots (pip install tensorboard).

    python tools/to_tensorboard.py out/cyclegan     # -> out/cyclegan/tensorboard/
    tensorboard --logdir out/cyclegan/tensorboard

Run it again as the run goes on: it writes its one events file (events.out.tfevents.log_jsonl)
anew, whole or not at all; anything else in the folder stays as it is.
"""
import argparse, glob, json, os, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts
import cyclegan

EVENTS = 'events.out.tfevents.log_jsonl'  # (TensorBoard reads files named *tfevents*)

def read_records(log):
    """The records of log.jsonl; a damaged line is one error naming it."""
    records = []
    try:
        with open(log, 'rb') as f:
            lines = f.read().splitlines()
    except OSError as e:
        sys.exit(f"error: {log}: cannot read it ({e.strerror})")
    for number, line in enumerate(lines, 1):
        try:  # (a line cut short, or not UTF-8: json.loads decodes the bytes)
            record = json.loads(line)
        except ValueError as e:
            sys.exit(f"error: {log}: line {number} is damaged ({cyclegan.in_one_line(e)}); "
                     f"nothing was written")
        if not isinstance(record, dict) or type(record.get('step')) is not int:
            sys.exit(f"error: {log}: line {number} is damaged (a record without a step); "
                     f"nothing was written")
        records.append(record)
    return records

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('out_dir', help="a run's --out_dir, which holds log.jsonl")
    args = p.parse_args(argv)
    log = os.path.join(args.out_dir, 'log.jsonl')
    if not os.path.isfile(log):
        sys.exit(f"error: {log}: no such file; name a run's --out_dir")
    records = read_records(log)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        sys.exit("error: the tensorboard package is not installed: pip install tensorboard")
    folder = os.path.join(args.out_dir, 'tensorboard')
    with tempfile.TemporaryDirectory() as tmp:  # events written aside, then moved in whole
        writer = SummaryWriter(tmp)
        for record in records:
            for k, v in record.items():
                if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(k, v, record['step'])
        writer.close()
        with open(glob.glob(os.path.join(tmp, '*tfevents*'))[0], 'rb') as f:
            events = f.read()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: {folder}: cannot write there ({e.strerror})")
    cyclegan.save_file(events, os.path.join(folder, EVENTS), replace=True)  # (its own file)
    print(f"wrote {len(records)} records of {log} into {os.path.join(folder, EVENTS)}")

if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; the events file is as it was", file=sys.stderr)
        sys.exit(130)
