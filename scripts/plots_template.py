"""Write the HTML template that makes ``dvc plots show`` work offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN.  This script fetches
those three npm packages with ``npm pack`` (at setup time, from the npm registry), and
writes a template with their minified builds inlined and no ``{scripts}`` placeholder, so
DVC adds no CDN tags.  ``.dvc/config`` points ``plots.html_template`` at the result.

    python scripts/plots_template.py [.dvc/plots-offline.html]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: The versions DVC's own page loads (dvc_render.vega.VegaRenderer.SCRIPTS), so specs render alike.
PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / ".dvc" / "plots-offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>jinglian plots</title>
{inlined}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def minified_build(tarball: Path, name: str) -> str:
    """``package/build/<name>.min.js`` from an npm tarball, safe to inline in a script tag."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"package/build/{name}.min.js")
        if member is None:
            raise SystemExit(f"{tarball}: no package/build/{name}.min.js")
        return member.read().decode("utf-8").replace("</script", "<\\/script")


def npm_pack(workdir: Path) -> dict[str, Path]:
    """Download the packages' tarballs into ``workdir``; ``{name: tarball}``."""
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    subprocess.run(["npm", "pack", "--silent", *specs], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    return {name: workdir / f"{name}-{version}.tgz" for name, version in PACKAGES.items()}


def write_template(out: Path, tarballs: dict[str, Path]) -> None:
    scripts = "\n".join(f"    <script>{minified_build(path, name)}</script>" for name, path in tarballs.items())
    page = PAGE.format(inlined=scripts)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="template to write (default: .dvc/plots-offline.html)")
    parser.add_argument("--tarballs", type=Path, default=None, metavar="DIR",
                        help="use vega-*.tgz already in DIR (from `npm pack`) instead of running npm")
    args = parser.parse_args(argv)
    if args.tarballs is not None:
        tarballs = {name: args.tarballs / f"{name}-{version}.tgz" for name, version in PACKAGES.items()}
        write_template(args.out, tarballs)
    else:
        with tempfile.TemporaryDirectory() as work:
            write_template(args.out, npm_pack(Path(work)))
    print(f"offline plots template -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
