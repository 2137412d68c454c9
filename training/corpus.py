#!/usr/bin/env python3
"""Build the training corpus for weft's default model: the King James Bible.

Source: Debian's `bible-kjv` (the `bible` program) and `bible-kjv-text` (its compressed
text) packages, fetched with `apt-get download` and unpacked with `dpkg -x` (no root
install needed). The `bible` program prints every verse; we keep its pretty-printed form
(book and chapter heading, then one verse per line) and clean it:

  * one chapter = one block: first line "Genesis 1", then one verse per line, without
    verse numbers; blocks are separated by one blank line;
  * runs of spaces are collapsed to one, lines are stripped; the text is plain ASCII.

Split (deterministic): the chapters are numbered 0..1188 in canonical order; chapter i goes
to validation when i % 20 == 19 (59 chapters, about 5%), otherwise to training.

Outputs (git-ignored, carried to the GPU machine): training/data/kjv-train.txt,
training/data/kjv-valid.txt, training/data/COPYRIGHT (Debian's copyright file, verbatim),
training/data/manifest.json (package versions and hashes, counts, output hashes).

Usage: python3 training/corpus.py [--out training/data]   (Python 3 standard library only;
needs apt-get and dpkg, i.e. a Debian/Ubuntu machine that reaches a Debian mirror.)
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

VALID_EVERY = 20
VALID_REMAINDER = 19
PACKAGES = ["bible-kjv", "bible-kjv-text"]
EXPECTED_VERSES = 31102
EXPECTED_CHAPTERS = 1189


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(workdir):
    """apt-get download the two packages into workdir and unpack them under workdir/root."""
    cmd = ["apt-get", "download"] + PACKAGES
    r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        # The package lists may be missing or stale on a fresh machine.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(cmd, cwd=workdir, check=True)
    debs = sorted(glob.glob(os.path.join(workdir, "*.deb")))
    if len(debs) != len(PACKAGES):
        sys.exit(f"expected {len(PACKAGES)} .deb files, found {debs}")
    root = os.path.join(workdir, "root")
    info = []
    for deb in debs:
        subprocess.run(["dpkg", "-x", deb, root], check=True)
        fields = {}
        for key in ("Package", "Version", "Architecture"):
            fields[key.lower()] = subprocess.run(
                ["dpkg-deb", "-f", deb, key], capture_output=True, text=True, check=True
            ).stdout.strip()
        fields["file"] = os.path.basename(deb)
        fields["sha256"] = sha256(deb)
        info.append(fields)
    return root, info


def read_bible(root):
    """Return [(heading, [verse, ...]), ...] for the whole Bible, in canonical order."""
    exe = os.path.join(root, "usr/bin/bible")
    data_dir = os.path.join(root, "usr/lib")
    # -l with a huge width: pretty-printing (the default) without line wrapping, so one
    # verse per line; headings ("Genesis 1") stand alone between blank lines.
    out = subprocess.run(
        [exe, "-p", data_dir, "-l", "1000000", "gen1:1-rev22:21"],
        stdin=subprocess.DEVNULL, capture_output=True, check=True,
    ).stdout.decode("ascii")
    chapters = []
    expected_verse = None
    for raw in out.split("\n"):
        if not raw.strip():
            continue
        m = re.match(r"^\s+(\d+) (.*)$", raw)
        if m:
            if not chapters:
                sys.exit("verse before the first heading")
            num = int(m.group(1))
            if num != expected_verse:
                sys.exit(f"{chapters[-1][0]}: verse {num}, expected {expected_verse}")
            expected_verse += 1
            verse = re.sub(r"\s+", " ", m.group(2)).strip()
            if not verse:
                sys.exit(f"{chapters[-1][0]}:{num} is empty")
            chapters[-1][1].append(verse)
        else:
            heading = re.sub(r"\s+", " ", raw).strip()
            if not re.match(r"^[1-3]?[A-Za-z ]+ \d+$", heading):
                sys.exit(f"unexpected line: {raw!r}")
            chapters.append((heading, []))
            expected_verse = 1
    n_verses = sum(len(v) for _, v in chapters)
    if len(chapters) != EXPECTED_CHAPTERS or n_verses != EXPECTED_VERSES:
        sys.exit(f"got {len(chapters)} chapters / {n_verses} verses, expected "
                 f"{EXPECTED_CHAPTERS} / {EXPECTED_VERSES}")
    return chapters


def chapter_text(heading, verses):
    return heading + "\n" + "".join(v + "\n" for v in verses)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kjv-")
    try:
        root, pkgs = fetch(work)
        chapters = read_bible(root)
        copyright_src = os.path.join(root, "usr/share/doc/bible-kjv-text/copyright")
        shutil.copyfile(copyright_src, os.path.join(args.out, "COPYRIGHT"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    train, valid = [], []
    for i, (heading, verses) in enumerate(chapters):
        (valid if i % VALID_EVERY == VALID_REMAINDER else train).append(chapter_text(heading, verses))
    outputs = {}
    for name, blocks in (("kjv-train.txt", train), ("kjv-valid.txt", valid)):
        path = os.path.join(args.out, name)
        text = "\n".join(blocks)  # one blank line between chapters
        text.encode("ascii")  # the cleaned text is pure ASCII
        with open(path, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        outputs[name] = {
            "chapters": len(blocks),
            "verses": sum(b.count("\n") - 1 for b in blocks),
            "bytes": os.path.getsize(path),
            "sha256": sha256(path),
        }
    manifest = {
        "source": "Debian packages " + ", ".join(f"{p['package']} {p['version']}" for p in pkgs),
        "packages": pkgs,
        "license": "The King James Version text is public domain (outside the United Kingdom, "
                   "where it is under perpetual Crown patent); Debian's copyright file is in COPYRIGHT.",
        "format": "chapters separated by a blank line; first line 'Book N'; one verse per line, no verse numbers",
        "split": f"chapter index i (0-based, canonical order): validation when i % {VALID_EVERY} == {VALID_REMAINDER}",
        "outputs": outputs,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
