"""What the README tells a newcomer to paste and post is what relay accepts, and its list of the
built-in event types is the catalog's own."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import httpx

from relay import readme
from relay.event_types import EVENT_TYPES

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _requests(paste: str) -> list[tuple[str, dict[str, object]]]:
    """Each curl of the paste: the API path it posts to and the JSON body it sends."""
    requests = []
    for command in paste.replace("\\\n", " ").splitlines():
        if not command.startswith("curl "):
            continue
        words = shlex.split(command)
        [url] = [w for w in words if w.startswith("$RELAY_URL/")]
        body = json.loads(words[words.index("-d") + 1])
        requests.append((url.removeprefix("$RELAY_URL"), body))
    return requests


def test_the_built_in_event_types_in_the_readme_are_the_catalogs() -> None:
    assert readme.rewrite(README.read_text()) == README.read_text(), (
        "README.md's built-in event types are stale: run `.venv/bin/python -m relay.readme`"
    )
    section = _section("### What each built-in event type carries")
    for event_type in EVENT_TYPES.values():
        assert f"| `{event_type.name}` |" in section
    # What a newcomer otherwise learns from 422s.
    assert "`error` (object: `message` (string)" in section
    assert "`url` (non-empty string), `mime` (string like `image/jpeg`)" in section


def test_the_readme_regenerates_its_event_types_section(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# relay\n\n{readme.BEGIN}\nold table\n{readme.END}\n\n## Commands\n")
    assert readme.main(["--check", "--readme", str(stale)]) == 1
    assert readme.main(["--readme", str(stale)]) == 0
    assert readme.main(["--check", "--readme", str(stale)]) == 0
    text = stale.read_text()
    assert "old table" not in text and text.endswith(f"{readme.END}\n\n## Commands\n")


async def test_the_quickstart_paste_registers_a_webhook_and_its_event_goes_there(
    admin: httpx.AsyncClient,
) -> None:
    quickstart = _section("## Quickstart")
    [paste] = re.findall(r"```sh\n(.*?)```", quickstart, re.S)
    [(webhook_path, webhook_body), (event_path, event_body)] = _requests(paste)
    # Only this machine and documentation hosts, in whatever the paste sends.
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\w+", str(webhook_body["url"]))

    made = await admin.post(webhook_path, json=webhook_body)
    assert made.status_code == 201, made.text
    assert made.json()["data"]["secret"].startswith("whsec_")
    accepted = await admin.post(event_path, json=event_body)
    assert accepted.status_code == 202, accepted.text
    [delivery] = accepted.json()["data"]["deliveries"]
    assert delivery["webhook_id"] == made.json()["data"]["id"]


async def test_every_example_event_in_the_readme_is_accepted(admin: httpx.AsyncClient) -> None:
    section = _section("### What each built-in event type carries")
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]
    assert sorted(e["type"] for e in examples) == sorted(EVENT_TYPES)
    for example in examples:
        response = await admin.post("/v1/events", json=example)
        assert response.status_code == 202, response.text
        # What the README says a type wants is what the API refuses without.
        if example["type"] == "post.failed":
            del example["data"]["error"]["message"]
            refused = await admin.post("/v1/events", json=example)
            assert refused.status_code == 422
            assert set(refused.json()["errors"]) == {"data.error.message"}
