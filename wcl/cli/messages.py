"""One-line messages: ``wcl: error: …`` for a parse error, a user error raised anywhere in a run, or a lost rank;
``wcl: warning: …`` for a setting that runs but probably not as meant."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser

from wcl.cli.run_folder import config_files, config_section, load_config, resolve_class
from wcl.constraints import DESCRIPTIONS, restriction_text
from wcl.distributed import lost_peer
from wcl.errors import WCLError

# What the user typed: the console script `wcl`, or `python -m wcl` (and anything else that calls main()).
PROG = "wcl" if Path(sys.argv[0]).name == "wcl" else "python -m wcl"


class Parser(LightningArgumentParser):
    """LightningCLI's parser named as the user called it (also on the ``--model.help`` pages jsonargparse builds),
    with parse errors in one line: what is wrong, and which help page lists the keys of ``subcommand``."""

    subcommand = "fit"
    # The command line being parsed, shared with the subcommands' parsers (jsonargparse builds those): set by WCLCLI.
    given_args: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", PROG)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse tries alternatives (union types) by catching these
            super().error(message, ex)
        text = unknown_key(str(message), Parser.given_args) or one_line(str(message))
        sys.stderr.write(f"wcl: error: {text} ({help_pointer(str(message), self.subcommand)})\n")
        sys.exit(2)


def unknown_key(message: str, args: list[str]) -> str | None:
    """A jsonargparse message about a key that no class takes, as the whole key, the config file that sets it (when
    one of ``args``' ``--config`` files does) and the closest key the class takes: ``trainer.max_epoch (set in
    overlay.yaml) is not a key of lightning.pytorch.Trainer; did you mean trainer.max_epochs?``. ``None`` for any
    other message."""
    if found := (re.match(r"Subcommand '\w+' does not accept option '([\w.]+)'", message)
                 or re.match(r"unrecognized arguments: --([\w.]+)", message)):
        key, named = found[1], "lightning.pytorch.Trainer"
        if not (key.startswith("trainer.") and key.count(".") == 1):
            return None
    elif found := re.search(r"Option '(\w+)' is not accepted", message):
        classes = re.findall(r"class_path '([\w.]+)'", message[:found.start()])
        if not classes:
            return None
        outer = one_line(message).split(":", 1)[0]  # the key of the class that refused it: model, data.augment
        key, named = f"{outer}.{found[1]}", classes[-1]
    else:
        return None
    owner = resolve_class(named)
    if owner is None:
        return None
    prefix, name = key.rsplit(".", 1)
    close = difflib.get_close_matches(name, _init_keys(owner), n=1)
    where = next((f" (set in {path})" for path in config_files(args) if _sets(path, key.split("."))), "")
    hint = f"; did you mean {prefix}.{close[0]}?" if close else ""
    return f"{key}{where} is not a key of {named}{hint}"


def _init_keys(cls: type) -> list[str]:
    """The keyword arguments of ``cls.__init__``, with its bases' where it passes ``**kwargs`` on."""
    keys: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        keys += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return keys


def _sets(path: str, keys: list[str]) -> bool:
    """Whether the YAML file at ``path`` sets the dotted key ``keys`` (a class's arguments under ``init_args`` or
    directly; a section may be a file it names)."""
    cfg = load_config(path)
    if not isinstance(cfg, dict) or keys[0] not in cfg:
        return False
    node = config_section(path, cfg, keys[0])
    for key in keys[1:]:
        if isinstance(node, dict) and key not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def help_pointer(message: str, subcommand: str) -> str:
    """The help page that lists the keys of the part a jsonargparse message is about: ``--model.help CLASS`` for
    a model key, ``--data.help CLASS`` for a data key (the class the config names), ``--help`` otherwise."""
    match = re.search(r'Parser key "([^"]+)"', message)
    group = match.group(1).split(".")[0] if match else ""
    named = re.search(r"class_path '([\w.]+)'", message)
    if group in ("model", "data"):
        cls = named.group(1) if named else ("wcl.WCL" if group == "model" else "wcl.WCLDataModule")
        return f"`{PROG} {subcommand} --{group}.help {cls}` lists its keys"
    if "argument subcommand" in message:
        return f"`{PROG} --help` lists the subcommands"
    return f"`{PROG} {subcommand} --help` lists the trainer's keys and where the others are listed"


_BOILERPLATE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "- Problem with given class_path",
                "- Not a valid subclass", "Subclass types expect")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _below(lines: list[str], i: int) -> list[str]:
    """The lines indented below ``lines[i]`` (what jsonargparse nests under it)."""
    out = []
    for line in lines[i + 1:]:
        if _indent(line) <= _indent(lines[i]):
            break
        out.append(line)
    return out


def _innermost(lines: list[str], key: str) -> tuple[str, list[str]]:
    """Follows a subclass's complaint (``- Problem with given class_path …``) past the union around it, and any
    ``Parser key`` in it, to the complaint itself: (the whole key, its lines)."""
    tried = next((i for i, line in enumerate(lines) if line.strip().startswith("- Problem with given class_")), None)
    if tried is None:
        return key, [line.strip() for line in lines]
    inner = _below(lines, tried)
    named = next((i for i, line in enumerate(inner) if line.strip().startswith("Parser key")), None)
    if named is None:
        return key, [line.strip() for line in inner]
    return _innermost(_below(inner, named), f"{key}.{_key_of(inner[named])}")


def _key_of(line: str) -> str:
    return line.strip().removeprefix("Parser key").strip(' ":')


def one_line(message: str) -> str:
    """The innermost complaint of a nested jsonargparse message, under the whole key and with what the key
    accepts (``model.temperature must be a number > 0, got 0``), without the union-type preamble around it."""
    raw = [line for line in message.strip().splitlines() if line.strip()]
    if not raw or not raw[0].startswith("Parser key"):
        return raw[0].strip() if raw else "invalid arguments"
    key, block = _innermost(_below(raw, 0), _key_of(raw[0]))
    given = next((line.split(":", 1)[1].strip() for line in block if line.startswith("Given value:")), None)
    body = [line.removeprefix("- ") for line in block if not line.startswith(_BOILERPLATE)]
    if not body:
        return raw[0].strip()
    if given is None:  # one type: the value is in the complaint
        got = re.search(r"Got value: (.+)$|^Not of type \w+: (.+) does not conform|with base \d+: '(.*)'$|"
                        r"to float: '(.*)'$", body[0])
        given = next((g for g in got.groups() if g is not None), None) if got else None
    accepted = [a for a in map(_accepted, body) if a]
    literals = [a.removeprefix("one of ") for a in accepted if a.startswith("one of ")]
    if literals:  # one list of the values a key takes
        accepted = [a for a in accepted if not a.startswith("one of ")] + ["one of " + ", ".join(literals)]
    if accepted and given is not None:
        return f"{key} must be {' or '.join(dict.fromkeys(accepted))}, got {given}"
    return f"{key}: {body[0]}"


def _accepted(complaint: str) -> str | None:
    """What one of jsonargparse's complaints says the key accepts: ``Not of type PositiveInt: …`` → ``an int >
    0``; ``Expected a <class 'int'>`` → ``an int``; ``Expected a typing.Literal['a', 'b']`` → ``one of a, b``."""
    restricted = re.match(r"Not of type (\w+):", complaint)
    if restricted:
        rule = re.search(r"restriction (.+)$", complaint)
        return DESCRIPTIONS.get(restricted[1]) or (restriction_text(rule[1]) if rule else restricted[1])
    expected = re.match(r"Expected a (.+?)(?:\. Got value:.*)?$", complaint)
    if not expected:
        return None
    literal = re.match(r"typing\.Literal\[(.*)\]$", expected[1])
    if literal:
        return "one of " + ", ".join(v.strip().strip("'\"") for v in literal[1].split(","))
    name = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", expected[1])
    return "null" if name == "NoneType" else f"a{'n' if name[:1] in 'aeiou' else ''} {name}"


def user_error(err: BaseException) -> str | None:
    """The one-line message behind ``err``, if it is a user error (jsonargparse and DataLoader workers wrap them)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (WCLError, MisconfigurationException)):
            text = str(seen).strip()
            if "Original Traceback" in text:  # raised in a data-loader worker: keep the worker's own message
                text = text.splitlines()[-1].split(": ", 1)[-1]
            return text
        if isinstance(seen, ValueError) and (text := trainer_value_error(str(seen))) is not None:
            return text
        seen = seen.__cause__ or seen.__context__
    return None


def trainer_value_error(message: str) -> str | None:
    """Lightning's ValueError about a trainer key that only the training loader's length shows wrong (raised when
    the loader is built, after the checks before the run), as the key and the fix; ``None`` for any other."""
    late = re.search(r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the training "
                     r"batches \((\d+)\)", message)
    if late is None:
        return None
    given, batches = late.groups()
    return (f"trainer.val_check_interval {given} is more than the {batches} training batches of an epoch, so the "
            f"run would never validate; give at most {batches}, a fraction in (0, 1] of the epoch (1.0: at its end), "
            "or add --trainer.check_val_every_n_epoch null to count the batches across epochs.")


def lost_rank(err: BaseException) -> str | None:
    """The one-line message for a collective that failed because another rank's process died (killed, out of
    memory, crashed): the backend reports the lost peer (:func:`wcl.distributed.lost_peer`) and every survivor
    stops at its next collective."""
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, RuntimeError) and lost_peer(str(seen))):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:  # the process group is gone already: the launchers' variables
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 0))
    peer = re.search(r"peer \[?([^\]\s]+?)\]?:(\d+)", str(seen))
    lost = f"rank {1 - rank}" if world == 2 else "another rank" + (f" (at {peer[1]}:{peer[2]})" if peer else "")
    run = f"this {world}-process run" if world else "this run"
    return (f"{lost} of {run} is gone (its process died: killed, out of memory or crashed; see its log), so rank "
            f"{rank} stops too. Resume from the last checkpoint with --ckpt_path last.")


def note(text: str) -> None:
    """A setting that runs but probably not as meant: one line, not an error."""
    print(f"wcl: warning: {text}", file=sys.stderr, flush=True)


# Lightning's info lines that every command printed: the hardware it did not find, and a note that wcl's own model
# table replaces Lightning's (a GPU that is there still gets its "GPU available: True (cuda), used: …" line).
_NOISE = ("litlogger", "litmodels", "TPU available", "HPU available", "GPU available: False",
          "Trainer already configured with model summary callbacks")


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in _NOISE)


def quiet() -> None:
    """Drop third-party noise from every run: advertisements, hardware that is absent, a deprecation warning of
    Lightning internals, and the eval-mode warning a linear probe's frozen backbone would raise."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # A linear probe's frozen backbone is in eval mode on purpose (its BatchNorm statistics stay pretraining's).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_noise)  # the same function: attached once however often main() runs
