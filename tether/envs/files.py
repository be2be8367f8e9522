"""A file tree the agent works on, kept by the environment and run in the sandbox.

The tree is a dict ``{relative path: text}``. Reading, listing, writing and deleting change that
dict directly (no code of the model runs for them; paths are normalized and may not leave the
tree). ``run_python`` is where the model's code runs: in ``tether.rewards.sandbox.run_python``
(namespaces, seccomp, no network), with the tree written into the sandbox's private working
directory first and read back after, so whatever the program changed is the new tree. Nothing on
the host is touched, and the same tree and code give the same result.
"""

from __future__ import annotations

import json
import posixpath

from tether.rewards.sandbox import run_python as sandbox_run

MAX_OUTPUT_CHARS = 2000  # tool output shown to the model
TREE_DIR = "work"  # the tree's folder inside the sandbox (main.py, the harness, sits beside it)

# Writes the tree, runs the model's code in it, reports the tree back through the report pipe
# (kept apart from the program's own output), even when the code raised.
_HARNESS = """\
import json, os, sys
_tree = json.loads({tree!r})
os.makedirs({folder!r}, exist_ok=True)
os.chdir({folder!r})
sys.path.insert(0, os.getcwd())  # the tree's modules import each other (python -I leaves the folder out)
for _path, _text in _tree.items():
    os.makedirs(os.path.dirname(_path) or ".", exist_ok=True)
    with open(_path, "w") as _file:
        _file.write(_text)
def _report(fd=__report_fd__, dump=json.dumps, walk=os.walk, join=os.path.join, relpath=os.path.relpath,
            write=os.write):
    found = {{}}
    for root, _dirs, names in walk("."):
        for name in names:
            path = join(root, name)
            try:
                with open(path, errors="replace") as handle:
                    found[relpath(path, ".")] = handle.read(100_000)
            except OSError:
                pass
    write(fd, dump(found).encode())
try:
    exec(compile({code!r}, "tool.py", "exec"), {{"__name__": "__main__"}})
finally:
    _report()
"""


def clean_path(path: str) -> str | None:
    """``path`` inside the tree, normalized; None for one that leaves it or is empty."""
    if not isinstance(path, str) or not path.strip():
        return None
    normal = posixpath.normpath(path.strip().lstrip("/").removeprefix("./"))
    return None if normal in (".", "") or normal.startswith("..") else normal


class FileTree:
    def __init__(self, files: dict[str, str]):
        self.files = dict(sorted(files.items()))

    def list_files(self, **_ignored) -> str:
        return "\n".join(self.files) or "(no files)"

    def read_file(self, path: str = "") -> str:
        clean = clean_path(path)
        if clean not in self.files:
            return f"error: no file {path!r}"
        return self.files[clean][:MAX_OUTPUT_CHARS]

    def write_file(self, path: str = "", content: str = "") -> str:
        clean = clean_path(path)
        if clean is None:
            return f"error: bad path {path!r}"
        self.files[clean] = str(content)
        self.files = dict(sorted(self.files.items()))
        return f"wrote {clean} ({len(str(content))} characters)"

    def delete_file(self, path: str = "") -> str:
        clean = clean_path(path)
        if clean not in self.files:
            return f"error: no file {path!r}"
        del self.files[clean]
        return f"deleted {clean}"

    def run_python(self, code: str = "", timeout_s: float = 5.0) -> str:
        program = _HARNESS.format(tree=json.dumps(self.files), folder=TREE_DIR, code=str(code))
        result = sandbox_run(program, timeout_s=timeout_s, with_report=True)
        try:
            self.files = dict(sorted(json.loads(result.report).items()))
        except ValueError:  # killed before reporting: the tree stays as it was
            pass
        shown = (result.stdout + result.stderr)[-MAX_OUTPUT_CHARS:]
        return f"[{result.status}]\n{shown}".rstrip()

    def tools(self) -> dict:
        return {"list_files": self.list_files, "read_file": self.read_file, "write_file": self.write_file,
                "delete_file": self.delete_file, "run_python": self.run_python}


# A concrete call, not a placeholder: the tool-SFT model copied '{"name": "TOOL", "arguments": {...}}'
# verbatim in 144 of 144 calls (invalid JSON) when the help showed that.
TOOL_HELP = """You can use tools. To call one, write exactly, for example:
<tool_call>
{"name": "read_file", "arguments": {"path": "notes.txt"}}
</tool_call>
Tools: list_files {}, read_file {"path"}, write_file {"path", "content"}, delete_file {"path"}, """ \
    """run_python {"code"} (runs with the files in the current folder; prints its output).
When you are done, answer without a tool call."""
