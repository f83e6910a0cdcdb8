"""The doctor's object-storage check: is ``checkpoint.dir=s3://bucket/prefix`` reachable and
writable from here?

Credentials and endpoint come the standard way (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, or an instance role), read by botocore as the trainer's will be. The
check lists the bucket, writes a small probe object under the prefix and deletes it; each failure is one line
in the terms a user acts on. s3fs (the ``.[s3]`` extra) is imported only when a URL is checked, and neither
torch nor the trainer ever is (launch/ never imports trainer/: the trainer's own start-of-run check,
trainer/checkpoint/stores.py ``check_writable``, words its errors the same way).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping


def is_url(path: str | None) -> bool:
    return bool(path) and "://" in path and not path.startswith("file://")


def _describe(e: BaseException, bucket: str, env: Mapping[str, str]) -> tuple[str, str]:
    name, text = type(e).__name__, (str(e).strip().splitlines() or [""])[0][:200]
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            "no credentials",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a Secret: --s3-secret), or an instance role",
        )
    if isinstance(e, FileNotFoundError):
        return f"bucket {bucket!r} does not exist ({text})", "create the bucket, or fix checkpoint.dir"
    if isinstance(e, PermissionError):
        return (
            f"access denied ({text})",
            "grant s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject on the prefix",
        )
    if "Endpoint" in name or "Connect" in name or isinstance(e, (ConnectionError, TimeoutError)):
        where = env.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
        return (
            f"endpoint unreachable: {where} ({text or name})",
            "check AWS_ENDPOINT_URL and the network path to it",
        )
    return f"{name}: {text}", "check the bucket, the credentials and AWS_ENDPOINT_URL"


def check_bucket(url: str, env: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(status ok|warn|fail, message, fix) for the doctor's ``checkpoint_dir`` check."""
    env = os.environ if env is None else env
    protocol, _, rest = url.partition("://")
    if protocol not in ("s3", "s3a"):
        return "warn", f"{url}: only s3:// is checked here", ""
    try:
        import s3fs  # ~0.4 s: only when checkpoint.dir is an s3:// URL (the .[s3] extra)
    except ImportError:
        return "fail", f"{url}: s3fs is not installed", "pip install '.[s3]' (make setup)"
    bucket = rest.split("/", 1)[0]
    client = {
        k: v
        for k, v in (("endpoint_url", env.get("AWS_ENDPOINT_URL")), ("region_name", env.get("AWS_REGION")))
        if v
    }
    probe = f"{rest.rstrip('/')}/.doctor-probe-{uuid.uuid4().hex[:12]}"
    try:
        # Keys from `env` when it has them (the doctor may check another environment than its own), else
        # botocore's chain: environment, shared files, instance role.
        fs = s3fs.S3FileSystem(
            key=env.get("AWS_ACCESS_KEY_ID"),
            secret=env.get("AWS_SECRET_ACCESS_KEY"),
            token=env.get("AWS_SESSION_TOKEN"),
            client_kwargs=client,
            use_listings_cache=False,
            skip_instance_cache=True,
        )
        fs.ls(bucket, detail=False)
        fs.pipe_file(probe, b"doctor")
        fs.rm_file(probe)
    except Exception as e:
        message, fix = _describe(e, bucket, env)
        return "fail", f"{url}: {message}", fix
    return "ok", f"{url}: reachable and writable", ""
