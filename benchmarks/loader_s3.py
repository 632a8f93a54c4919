"""Loader img/s reading the same shards from s3:// and from local disk.

    python -m benchmarks.loader_s3                              # moto's S3 server on 127.0.0.1, demo shards in /tmp
    AWS_ENDPOINT_URL=... python -m benchmarks.loader_s3 --uri s3://bucket/bench --data data/shards   # a real store

Without --uri it starts moto's server (pip install 'moto[server]') on a free 127.0.0.1 port with dummy credentials,
uploads --data there and reads it back: a Python server on the same machine, so the number says what the s3://
path costs here (HTTP, the AWS SDK inside DALI, the server's CPU), not what a real store over a network gives.
Repeats alternate local and s3, so drift in the machine's speed hits both alike; medians reported.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.timing import loader_images_per_second
from pipeline import build_shards, object_store
from pipeline import manifest as mf
from pipeline.loader import make_loader


def moto_server():
    """(server process, endpoint URL): moto's S3 server on a free 127.0.0.1 port, answering (tests use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return server, url
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"moto server on {url} did not answer within 10 s (is moto[server] installed?)")


def start_moto():
    """moto_server(), with dummy credentials for it in this process's environment."""
    server, url = moto_server()
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    return server, url


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/bench_loader_s3"),
                   help="local shards; built (demo set, 150 train images per class) if missing "
                        "(default: /tmp/bench_loader_s3)")
    p.add_argument("--uri", default=None, help="s3://bucket/prefix to upload to and read from (default: a moto "
                   "server started here, s3://bench/shards)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--crop", type=int, default=224, help="crop size (default: 224)")
    p.add_argument("-j", "--threads", type=int, default=os.cpu_count(),
                   help=f"DALI threads (default: {os.cpu_count()}, the CPU count)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each (default: 3)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here (default: none)")
    args = p.parse_args(argv)
    if not mf.manifest_path(args.data).is_file():
        build_shards.build(build_shards.BuildConfig(out=args.data, demo_train_per_class=150, demo_val_per_class=5,
                                                    shard_size=500))
    server = None
    if args.uri is None:
        server, _ = start_moto()
        args.uri = "s3://bench/shards"
        object_store.client().create_bucket(Bucket="bench")
    try:
        object_store.upload(args.data, args.uri, mf.load(args.data))
        runs = {"local": [], "s3": []}
        for _ in range(args.repeats):
            for name, src in (("local", args.data), ("s3", args.uri)):
                loader = make_loader(src, "train", args.batch_size, train=True, crop=args.crop,
                                     num_threads=args.threads)
                runs[name].append(loader_images_per_second(loader, epochs=args.epochs))
                print(f"{name}: {runs[name][-1]:.0f} img/s", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    median = {k: statistics.median(v) for k, v in runs.items()}
    result = {"samples": mf.load(args.data)["splits"]["train"]["num_samples"], "batch_size": args.batch_size,
              "crop": args.crop, "threads": args.threads, "epochs": args.epochs, "store": "moto" if server else
              args.uri, "local_img_s": median["local"], "s3_img_s": median["s3"],
              "s3_vs_local": median["s3"] / median["local"], "all": runs, "load_average": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
