"""Finding a Java runtime new enough for the Kafka broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from tools.kafka.errors import KafkaSetupError
from tools.kafka.paths import BOOTSTRAP_ENV, KAFKA_VERSION, MIN_JAVA_MAJOR


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaSetupError(
            f"`java` was not found on PATH (or in $JAVA_HOME). The local Kafka broker needs "
            f"Java {MIN_JAVA_MAJOR}+: install a JDK/JRE (e.g. `apt-get install "
            f"openjdk-17-jre-headless`), or set {BOOTSTRAP_ENV} to use an existing cluster."
        )
    return found


@cache
def java_major(java: str) -> int:
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"could not run `{java} -version`: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        return 0
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def checked_java() -> str:
    java = find_java()
    major = java_major(java)
    if major < MIN_JAVA_MAJOR:
        raise KafkaSetupError(
            f"{java} is Java {major or '(unknown version)'}; Kafka {KAFKA_VERSION} needs Java "
            f"{MIN_JAVA_MAJOR}+. Install a newer JDK and put it first on PATH or set JAVA_HOME."
        )
    return java

