"""Fetching Kafka's jars once from Maven Central into the cache (``mvn``, the packaged pom)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from tools.kafka.errors import KafkaSetupError
from tools.kafka.files import file_lock, file_tail, write_atomic
from tools.kafka.java import find_java
from tools.kafka.paths import BOOTSTRAP_ENV, KAFKA_VERSION, MARKER, kafka_home, resource


def ensure_kafka(version: str = KAFKA_VERSION, *, timeout_s: float = 1800) -> Path:
    """Return the directory of Kafka ``version``'s jars, downloading them once with Maven.

    Idempotent and safe to call from several processes at once: the download runs under a
    file lock and a marker file is written only after it completed.
    """
    home = kafka_home(version)
    libs = home / "libs"
    marker = home / MARKER
    # the pom's bytes key the cache: any edit (a comment too) fetches the jars again, for
    # every checkout that shares the cache
    pom_hash = hashlib.sha256(resource("pom.xml").read_bytes()).hexdigest()

    def complete() -> bool:  # downloaded with the current pom (a changed pom fetches again)
        if not (marker.is_file() and libs.is_dir()):
            return False
        try:
            return bool(json.loads(marker.read_text()).get("pom_sha256") == pom_hash)
        except ValueError:
            return False

    if complete():
        return libs
    with file_lock(home / ".lock"):
        if complete():  # another process finished meanwhile
            return libs
        _download(version, home, libs, timeout_s)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        write_atomic(marker, json.dumps({"version": version, "jars": jars,
                                          "pom_sha256": pom_hash}, indent=1) + "\n")
    return libs


def _download(version: str, home: Path, libs: Path, timeout_s: float) -> None:
    find_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(
            "`mvn` (Apache Maven) was not found on PATH; it is needed once to fetch Kafka "
            f"{version}'s jars from Maven Central into {libs}. Install Maven (e.g. "
            f"`apt-get install maven`), or set {BOOTSTRAP_ENV} to use an existing cluster."
        )
    # mvn runs on a copy of the pom in the cache, so nothing is written next to the package.
    pom = home / "pom.xml"
    shutil.copyfile(resource("pom.xml"), pom)
    partial = home / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}", f"-Dkafka.version={version}",
    ]  # fmt: skip
    advice = (
        "What to do: check that Maven Central (https://repo.maven.apache.org/maven2) is "
        "reachable, or configure a mirror/proxy in ~/.m2/settings.xml; check that Kafka "
        f"{version} exists as org.apache.kafka:kafka_2.13; or set {BOOTSTRAP_ENV} to use an "
        "existing Kafka cluster instead."
    )
    log_path = home / "mvn.log"
    try:
        with log_path.open("wb") as log:
            proc = subprocess.run(
                cmd, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout_s, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise KafkaSetupError(
            f"fetching Kafka {version} with Maven timed out after {timeout_s:.0f}s.\n"
            f"Last lines of {log_path}:\n{file_tail(log_path)}\n{advice}"
        ) from exc
    if proc.returncode != 0:
        raise KafkaSetupError(
            f"fetching Kafka {version} with Maven failed (exit {proc.returncode}): "
            f"{' '.join(cmd)}\nLast lines of {log_path}:\n{file_tail(log_path)}\n{advice}"
        )
    if not (partial / f"kafka_2.13-{version}.jar").is_file():
        raise KafkaSetupError(
            f"Maven finished but {partial} has no kafka_2.13-{version}.jar.\n"
            f"Last lines of {log_path}:\n{file_tail(log_path)}\n{advice}"
        )
    partial.rename(libs)

