"""Avatar preparation from the command line.

    python -m models.avatar prepare --image FILE | --video FILE [--name NAME] [--avatar-dir DIR] [--overwrite]
    python -m models.avatar list [--avatar-dir DIR]
    python -m models.avatar delete NAME [--avatar-dir DIR]

The avatar folder is --avatar-dir, else $AVATAR_AVATAR_DIR (as for the server), else
~/.local/share/avatar-server/avatars. Errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from models.avatar.store import AvatarStore, AvatarStoreError, default_avatar_dir, name_from_filename

ENV_AVATAR_DIR = "AVATAR_AVATAR_DIR"
EXIT_USAGE = 2


def avatar_dir(flag: Path | None) -> Path:
    """--avatar-dir, else the server's environment variable, else the per-user default."""
    if flag is not None:
        return flag
    env = os.environ.get(ENV_AVATAR_DIR)
    return Path(env) if env else default_avatar_dir()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.avatar",
                                     description="Prepare, list and delete avatars for the avatar server.")
    dir_help = f"avatar folder (default: ${ENV_AVATAR_DIR}, else {default_avatar_dir()})"
    commands = parser.add_subparsers(dest="command", required=True)

    prep = commands.add_parser("prepare", help="turn a photo or a short video into an avatar")
    source = prep.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, metavar="FILE", help="a photo with one frontal face")
    source.add_argument("--video", type=Path, metavar="FILE", help="a short video of one face (a few seconds)")
    prep.add_argument("--name", help="avatar name: letters, digits, _ and - (default: the file name)")
    prep.add_argument("--avatar-dir", type=Path, help=dir_help)
    prep.add_argument("--overwrite", action="store_true", help="replace an avatar of the same name")
    prep.add_argument("--max-seconds", type=float, default=10.0, help="keep at most this much video (default 10)")
    prep.add_argument("--fps", type=float, default=25.0, help="frame rate of the prepared video (default 25)")
    prep.add_argument("--max-side", type=int, default=720,
                      help="scale frames down so the longer side is at most this (default 720)")

    listing = commands.add_parser("list", help="list prepared avatars")
    listing.add_argument("--avatar-dir", type=Path, help=dir_help)

    delete = commands.add_parser("delete", help="delete a prepared avatar")
    delete.add_argument("name")
    delete.add_argument("--avatar-dir", type=Path, help=dir_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = AvatarStore(avatar_dir(args.avatar_dir))
    try:
        if args.command == "prepare":
            return _prepare(args, store)
        if args.command == "list":
            return _list(store)
        store.delete(args.name)
        print(f"deleted avatar '{args.name}' from {store.root}")
        return 0
    except (AvatarStoreError, ValueError) as err:
        # PrepareError is a ValueError: one line, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; nothing was saved", file=sys.stderr)
        return 130


def _prepare(args: argparse.Namespace, store: AvatarStore) -> int:
    from models.avatar.prepare import prepare_image, prepare_video

    path: Path = args.image or args.video
    name = args.name or name_from_filename(path.name)
    with _ProgressBar() as bar:
        if args.image is not None:
            info = prepare_image(path, name, store, progress=bar, overwrite=args.overwrite, max_side=args.max_side)
        else:
            info = prepare_video(path, name, store, max_seconds=args.max_seconds, target_fps=args.fps,
                                 max_side=args.max_side, progress=bar, overwrite=args.overwrite)
    for note in info.notes:
        print(f"note: {note}", file=sys.stderr)
    what = f"{info.frames} frames at {info.fps:g} fps" if info.kind == "video" else "photo"
    print(f"prepared avatar '{info.name}' ({what}, {info.width}x{info.height}) in {store.root / info.name}")
    return 0


def _list(store: AvatarStore) -> int:
    infos = store.list()
    if not infos:
        print(f"no avatars in {store.root}; add one with `python -m models.avatar prepare --image FILE`")
        return 0
    print(f"{'NAME':<24} {'KIND':<6} {'FRAMES':>6} {'FPS':>5} {'SIZE':>10}  CREATED")
    for info in infos:
        size = f"{info.width}x{info.height}"
        fps = f"{info.fps:g}" if info.kind == "video" else "-"
        print(f"{info.name:<24} {info.kind:<6} {info.frames:>6} {fps:>5} {size:>10}  {info.created}")
    return 0


class _ProgressBar:
    """progress(done, total, message) -> a tqdm bar on stderr, one stage at a time."""

    def __init__(self) -> None:
        self._bar = None
        self._message = ""

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, done: int, total: int, message: str) -> None:
        from tqdm import tqdm

        if message == "saved":  # the end, not a stage worth a bar
            self.__exit__()
            self._bar = None
            return
        if self._bar is None or message != self._message:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total or None, desc=message, unit="frame", file=sys.stderr, leave=False,
                             dynamic_ncols=True)
            self._message = message
        if total:
            self._bar.total = total
        self._bar.n = done
        self._bar.refresh()


if __name__ == "__main__":
    sys.exit(main())
