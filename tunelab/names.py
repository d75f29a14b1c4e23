"""Resource names: DNS-1123 labels, as Kubernetes and the API contract require."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_label(value: str) -> str:
    # fullmatch: `$` would match before a final newline, and "name\n" is no label.
    if len(value) > 63 or not DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


Name = Annotated[str, AfterValidator(check_label)]
