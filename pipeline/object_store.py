"""Shards in an S3-compatible object store: s3://bucket/prefix as the builder's --out and the launcher's --data.

Layout under the prefix is the folder's: manifest.json, train/*.tar + .idx, val/*.tar + .idx. The builder builds in a
local staging folder, uploads each file with its sha256 (the store checks the body against it), confirms size and
checksum after the upload, and puts manifest.json last: a prefix with a complete manifest holds a complete build.
Readers get manifest.json and the small .idx files into a local cache once per process; DALI reads the tars
themselves over s3://.

Credentials and the endpoint come only from the standard AWS environment and files (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, AWS_ENDPOINT_URL for a non-AWS store): nothing here takes,
prints or stores them, and a URI with credentials in it is refused.
"""
import base64
import hashlib
import io
import json
import os
import urllib.parse
from pathlib import Path

from pipeline.byte_ranges import RangeFile, sha256_file

STAGING = Path("data/staging")
MAX_PUT = 5 * 2**30  # S3's limit for one PutObject, the call that carries a whole-object sha256
CREDENTIALS_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or ~/.aws/credentials), and "
                    "AWS_ENDPOINT_URL for a store that is not AWS")


class ObjectStoreError(Exception):
    """The store cannot be used as given; the message names the URI and says what to do."""


def is_uri(text):
    return isinstance(text, str) and text.startswith("s3://")


def parse(uri):
    """(bucket, prefix) of s3://bucket/prefix; an error for a URI without a bucket or with credentials in it."""
    u = urllib.parse.urlsplit(uri)
    if "@" in u.netloc:
        raise ObjectStoreError(f"{uri.split('@')[-1]}: credentials do not belong in the URI (they would reach "
                               f"config.json and logs); {CREDENTIALS_HELP}.")
    if not u.netloc:
        raise ObjectStoreError(f"{uri}: no bucket; expected s3://bucket/prefix.")
    return u.netloc, u.path.strip("/")


def _key(prefix, rel):
    return f"{prefix}/{rel}" if prefix else rel


def default_staging(uri):
    bucket, prefix = parse(uri)
    return STAGING / bucket / prefix


def cache_root():
    return Path(os.environ.get("ALEXNET_CACHE", Path.home() / ".cache" / "alexnet")) / "s3"


def client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ObjectStoreError("s3:// paths need boto3: pip install boto3.") from None
    # A few quick retries: an unreachable endpoint should fail in seconds with a message, not hang for minutes.
    # A session of its own: boto3's default one keeps the credentials it first found, however the environment changes.
    return boto3.session.Session().client("s3", config=Config(connect_timeout=5, read_timeout=60,
                                                              retries={"max_attempts": 3}))


def explain(e, uri):
    """An ObjectStoreError naming uri and what to do, for a boto3/botocore exception."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS S3")
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return ObjectStoreError(f"{uri}: no AWS credentials found; {CREDENTIALS_HELP}.")
    if isinstance(e, EndpointConnectionError) or "Connect" in type(e).__name__:
        return ObjectStoreError(f"{uri}: cannot reach {endpoint} ({type(e).__name__}). Check AWS_ENDPOINT_URL and "
                                "that the store is up and reachable from here.")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        bucket = parse(uri)[0]
        if code in ("NoSuchBucket", "404") and e.operation_name == "HeadBucket":
            return ObjectStoreError(f"{uri}: bucket {bucket!r} does not exist at {endpoint}. Create it "
                                    f"(aws s3 mb s3://{bucket}) or fix the URI.")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied", "ExpiredToken"):
            return ObjectStoreError(f"{uri}: {endpoint} refused the credentials ({code}); {CREDENTIALS_HELP}, "
                                    "with access to this bucket.")
        return ObjectStoreError(f"{uri}: {e.operation_name} failed ({code}: {e.response['Error'].get('Message')}).")
    return ObjectStoreError(f"{uri}: {type(e).__name__}: {e}")


def _call(uri, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as e:
        raise explain(e, uri) from None


def _get_manifest(s3, uri):
    """manifest.json's bytes under uri, or None where there is none (the bucket must exist and be readable)."""
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, prefix = parse(uri)
    try:
        s3.head_bucket(Bucket=bucket)
        return s3.get_object(Bucket=bucket, Key=_key(prefix, "manifest.json"))["Body"].read()
    except ClientError as e:
        if e.operation_name == "GetObject" and e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise explain(e, uri) from None
    except BotoCoreError as e:
        raise explain(e, uri) from None


def open_for_upload(uri, *, resume):
    """The manifest already under uri (None if none); an error if the prefix holds an upload to be resumed."""
    s3 = client()
    bucket, prefix = parse(uri)
    body = _get_manifest(s3, uri)
    if body is not None:
        return json.loads(body)
    listed = _call(uri, s3.list_objects_v2, Bucket=bucket, Prefix=_key(prefix, ""), MaxKeys=1)
    if listed.get("KeyCount", 0) and not resume:
        raise ObjectStoreError(f"{uri} holds objects but no manifest.json (an unfinished upload?). Pass --resume to "
                               "continue it, or use another prefix.")
    return None


def _remote(s3, uri, key):
    """(size, sha256 hex) of an object, or None where it is missing."""
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, _ = parse(uri)
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise explain(e, uri) from None
    except BotoCoreError as e:
        raise explain(e, uri) from None
    sha = head.get("ChecksumSHA256")
    return head["ContentLength"], base64.b64decode(sha).hex() if sha and "-" not in sha else None


def _files(manifest):
    """[(relative path, sha256 or None)] of a build's shard files; a tar's sha256 is in the manifest."""
    return [(f"{split}/{name}", s["sha256"] if name == s["tar"] else None)
            for split, entry in manifest["splits"].items() for s in entry["shards"] for name in (s["tar"], s["idx"])]


def upload(staging, uri, manifest):
    """Put a finished local build under uri: files already there with the right size and sha256 are skipped, each
    upload is checked after, and manifest.json goes last."""
    s3, (bucket, prefix) = client(), parse(uri)
    files = _files(manifest)
    sent = skipped = 0
    for n, (rel, sha) in enumerate(files, 1):
        path = Path(staging) / rel
        want = (path.stat().st_size, sha or sha256_file(path))
        if want[0] > MAX_PUT:
            raise ObjectStoreError(f"{path}: {want[0]} bytes, over the 5 GiB of one upload; rebuild with a smaller "
                                   "--shard-size (e.g. 1GB).")
        key = _key(prefix, rel)
        if _remote(s3, uri, key) == want:
            skipped += 1
            continue
        with open(path, "rb") as body:
            # S3 checks the body against the manifest's sha256 and keeps it, for the check below and for --verify.
            _call(uri, s3.put_object, Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256",
                  ChecksumSHA256=base64.b64encode(bytes.fromhex(want[1])).decode())
        got = _remote(s3, uri, key)
        if got != want:
            raise ObjectStoreError(f"{uri}/{rel}: after the upload the store has size/sha256 {got}, expected {want}. "
                                   "Run the same command with --resume to upload it again.")
        sent += 1
        print(f"uploaded {n}/{len(files)}: {uri}/{rel}", flush=True)
    _call(uri, s3.put_object, Bucket=bucket, Key=_key(prefix, "manifest.json"),
          Body=json.dumps(manifest, indent=1).encode(), ContentType="application/json")
    print(f"{uri}: {sent} files uploaded, {skipped} already there and checked, manifest.json last")


def _built_manifest(s3, uri):
    """(manifest.json's bytes, parsed) of the build under uri; a clear error where there is none."""
    body = _get_manifest(s3, uri)
    if body is None:
        raise ObjectStoreError(f"{uri}: no manifest.json there. Build shards first: python pipeline/build_shards.py "
                               f"--src IMAGENET --out {uri}")
    return body, json.loads(body)


def verify(uri):
    """Problems with the build under uri as messages: every file present with the manifest's size and sha256."""
    s3, (_, prefix) = client(), parse(uri)
    _, man = _built_manifest(s3, uri)
    sizes = {f"{split}/{s['tar']}": s["bytes"] for split, e in man["splits"].items() for s in e["shards"]}
    problems = []
    for rel, sha in _files(man):
        got = _remote(s3, uri, _key(prefix, rel))
        if got is None:
            problems.append(f"{uri}/{rel}: missing. Upload again with --resume.")
        elif rel in sizes and (got[0] != sizes[rel] or (got[1] is not None and got[1] != sha)):
            problems.append(f"{uri}/{rel}: size/sha256 {got} differ from the manifest's {(sizes[rel], sha)}.")
    return problems


_LOCAL = {}  # uri -> local folder: manifest and .idx files are fetched once per process


def local_copy(uri):
    """A local folder with uri's manifest.json and .idx files (the tars stay in the store), cached by the manifest's
    content so that a rebuilt prefix never mixes old and new indexes."""
    if uri in _LOCAL:
        return _LOCAL[uri]
    s3, (bucket, prefix) = client(), parse(uri)
    body, man = _built_manifest(s3, uri)
    where = cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:16] / hashlib.sha256(body).hexdigest()[:16]
    for rel, _ in _files(man):
        path = where / rel
        if rel.endswith(".idx") and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes on one node may fetch at once
            tmp.write_bytes(_call(uri, s3.get_object, Bucket=bucket, Key=_key(prefix, rel))["Body"].read())
            os.replace(tmp, path)
    tmp = where / f"manifest.json.{os.getpid()}.tmp"
    where.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(body)
    os.replace(tmp, where / "manifest.json")
    _LOCAL[uri] = where
    return where


class _Ranges(RangeFile):
    """A stored object as a read-only seekable file, each read one ranged GET (wrapped in a BufferedReader, which
    turns small sequential reads into few requests)."""

    def __init__(self, uri):
        self.uri, (self.bucket, self.key) = uri, parse(uri)
        self.s3 = client()
        super().__init__(_call(uri, self.s3.head_object, Bucket=self.bucket, Key=self.key)["ContentLength"])

    def read_at(self, offset, n):
        rng = f"bytes={offset}-{offset + n - 1}"
        return _call(self.uri, self.s3.get_object, Bucket=self.bucket, Key=self.key, Range=rng)["Body"].read()


def open_read(uri):
    """A stored shard as a binary file for random reads (pipeline/samples.py's, for figure 4)."""
    return io.BufferedReader(_Ranges(uri), buffer_size=1 << 20)
