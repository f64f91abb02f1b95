"""First contact: every command the README and docs/ show, and every key and default the README names, is
true of the code. The commands are walked: each composes into a config whose every part is checked
against its class (no model loads); those that need data this machine lacks fail with one `error:` line;
those documented with an error print that line; one tiny real run prints no error-looking line. The
README's keys exist with the stated defaults, and `--help` lists every group and launcher."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SMALL_DEMO, requires
from helpers.runs import run_in_one_process
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from visa.config import VisaConfig, check_part, register
from visa.core.errors import VisaError
from visa.entry import check_command_line

register()

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = "python -m visa.run"
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-dir", "-cd", "--config-name", "-cn")
PLACEHOLDER = re.compile(r"<[a-z_ ]+>|\.\.\.|…")


# -- the commands the docs show -----------------------------------------------------------------------------
def _argv(command: str) -> list[str] | None:
    """The arguments of one documented command (shell comments and what follows `&`, `;`, `|` left out),
    None for a command with a placeholder (`experiment=<cell>`, `...`)."""
    tokens = shlex.split(command.replace("\\\n", " "), comments=True)
    for i, token in enumerate(tokens):
        if token in ("&", "&&", ";", "|") or token.endswith(("&", ";")):
            tokens = tokens[: i + 1 if token.endswith(("&", ";")) and len(token) > 1 else i]
            break
    tokens = [t.rstrip("&;") for t in tokens]
    if tokens[:3] != COMMAND.split() or any(PLACEHOLDER.search(t) for t in tokens):
        return None
    return tokens[3:]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file:line, arguments) of every `python -m visa.run` in README.md and docs/*.md: the lines of code
    blocks (with their `\\` continuations) and inline code."""
    found: list[tuple[str, list[str]]] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        fenced, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.lstrip().startswith("```"):
                fenced = not fenced
            in_code = fenced or line.startswith("    ")
            if in_code and line.strip().startswith(COMMAND):
                start, command = i, line.strip()
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command[:-1] + " " + lines[i].strip()
                argv = _argv(command)
                if argv is not None:
                    found.append((f"{path.name}:{start + 1}", argv))
            i += 1
        for match in re.finditer(r"`(python -m visa\.run(?: [^`]*)?)`", path.read_text()):
            argv = _argv(match.group(1).replace("\n", " "))
            if argv is not None:
                line_no = path.read_text()[: match.start()].count("\n") + 1
                found.append((f"{path.name}:{line_no}", argv))
    return found


def documented_errors() -> list[tuple[str, list[str], str]]:
    """(file:line, arguments, the line shown) of each command shown with its error: a table row
    `| `python -m visa.run ARGS` | `error: ...` |` or the prose `python -m visa.run ARGS` → `error: ...`."""
    pattern = re.compile(r"`(python -m visa\.run [^`]+)`(?: \(.*?\))? *(?:→|\|) *`(error: [^`]+)`", re.S)
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in pattern.finditer(text):
            argv = _argv(match.group(1).replace("\n", " "))
            if argv is not None:
                line_no = text[: match.start()].count("\n") + 1
                shown = " ".join(match.group(2).split()).replace("\\|", "|")  # `\|` inside a table
                found.append((f"{path.name}:{line_no}", argv, shown))
    return found


def _overrides(argv: list[str]) -> list[str]:
    """The overrides of a command as one job composes them: Hydra's flags left out, a sweep's first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out, skip = OverridesParser.create(), [], False
    for arg in argv:
        if skip or arg in FLAGS_WITH_VALUE:
            skip = not skip
            continue
        if arg.startswith("-"):
            continue
        override = parser.parse_override(arg)
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            arg = f"{override.get_key_element()}={first}"
        out.append(arg)
    return out


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def check_parts(cfg: DictConfig) -> None:
    """Every part of the composed config (a node with `_target_`) checked against its class."""
    from visa.config import _import_target

    # the re-ranker is given the parts it uses (`uses`) when it is built: they are not keys of its config
    uses = tuple(getattr(_import_target(cfg.reranker._target_, "reranker"), "uses", ()))
    for key in cfg:
        if key != "hydra" and isinstance(cfg[key], DictConfig) and "_target_" in cfg[key]:
            check_part(cfg[key], str(key), uses if key == "reranker" else ())


ERRORS = documented_errors()
COMMANDS = [(w, a) for w, a in documented_commands() if a not in [e[1] for e in ERRORS]]


def test_the_docs_show_commands_to_walk():
    assert len(COMMANDS) > 30, COMMANDS
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert {"README.md", "datasets.md", "rerankers.md", "scaling.md", "tracking.md"} <= where


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_composes_with_every_part_checked(where, argv):
    """What `python -m visa.run ARGS` checks before anything loads: the command line (unknown keys,
    secrets), Hydra's composition, every part's keys against its class."""
    cfg = compose_cfg(_overrides(check_command_line(list(argv))))
    check_parts(cfg)


def _needs_data(argv: list[str]) -> bool:
    """A single run (no -m, --cfg, --help) whose dataset reads files that are not here: its root is under
    data_dir, or a folder the command names that does not exist. The shipped demos have no root."""
    if any(a.startswith("-") for a in argv):
        return False
    cfg = compose_cfg(_overrides(check_command_line(list(argv))))
    root = OmegaConf.to_container(cfg.dataset, resolve=False).get("root")
    return root is not None and ("data_dir" in str(root) or not Path(str(root)).expanduser().exists())


def test_documented_commands_run_or_fail_with_the_documented_line(tmp_path, session_cache):
    """One Python process runs: every documented single run whose data is not on this machine (it must
    stop with one `error:` line before any model loads), every command shown with its error (that line),
    `--help`, and one tiny real run with a normaliser (no line that reads as an error)."""
    missing = [(w, a) for w, a in COMMANDS if _needs_data(a)]
    errors = ERRORS
    assert len(missing) >= 8 and len(errors) >= 6, (missing, errors)
    tiny = ["normalizer=nnn", *SMALL_DEMO]
    argvs = [[*a, f"hydra.run.dir={tmp_path / f'run{i}'}"] for i, (_, a) in enumerate(missing)]
    argvs += [list(a) for _, a, _ in errors]
    argvs += [["--help"], [*tiny, f"hydra.run.dir={tmp_path / 'tiny'}"]]
    env = {
        **os.environ,
        "VISA_DATA": str(tmp_path / "no-data"),  # every dataset's files are missing here
        "VISA_CACHE": str(session_cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    outcomes, _ = run_in_one_process(argvs, cwd=REPO, env=env, timeout=900)
    for (where, argv), out in zip(missing, outcomes):
        said = [line for line in out["stderr"].splitlines() if line.startswith("error:")]
        assert out["code"] == 1 and len(said) == 1, (where, argv, out)
        assert "Traceback" not in out["stderr"] + out["stdout"], (where, out)
    for (where, _, shown), out in zip(errors, outcomes[len(missing) :]):
        (line,) = out["stderr"].strip().splitlines()
        pattern = ".*".join(re.escape(p) for p in re.split(r"\.\.\.|…", shown))
        assert out["code"] == 1 and re.fullmatch(pattern, line), (where, shown, line)
    help_text = outcomes[-2]["stdout"]
    check_help(help_text)
    tiny_out = outcomes[-1]
    assert tiny_out["code"] == 0, tiny_out["stderr"][-3000:]
    alarming = [
        line
        for line in (tiny_out["stdout"] + tiny_out["stderr"]).splitlines()
        if re.search(r"error|exception|traceback", line, re.I)
    ]
    assert alarming == [], alarming
    assert "R@1" in tiny_out["stdout"] and "run folder:" in tiny_out["stdout"]


def check_help(text: str) -> None:
    """`--help` lists every group of conf/ with its options, and every launcher of conf/hydra/launcher."""
    groups = sorted(d.name for d in (REPO / "conf").iterdir() if d.is_dir() and d.name != "hydra")
    for group in groups:
        options = ", ".join(sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")))
        assert f"{group}: {options}" in text, group
    launchers = sorted(p.stem for p in (REPO / "conf" / "hydra" / "launcher").glob("*.yaml"))
    (line,) = [line for line in text.splitlines() if line.startswith("hydra/launcher:")]
    assert sorted(re.findall(r"(\w+) \(", line.removeprefix("hydra/launcher:"))) == launchers


# -- launchers ----------------------------------------------------------------------------------------------
def test_a_local_sweep_says_what_each_job_did_and_a_failed_job_is_one_line(tmp_path):
    """hydra/launcher=local on the reference release's files (no model loads): the console gets one line per
    job and where their output is; submitit's folder has no `%j`; a failed job ends the sweep with its own
    line and its log, not submitit's report."""
    requires("hydra_plugins.hydra_submitit_launcher", "cluster")
    import numpy as np
    from test_release import write_release

    rng = np.random.default_rng(0)
    write_release(tmp_path, "toy", rng.normal(size=(24, 12)), rng.normal(size=(24, 12)), 12)
    common = [
        "-m",
        "hydra/launcher=local",
        "dataset=visa_release",
        f"dataset.root={tmp_path}",
        "dataset.name=toy",
    ]
    good, bad = tmp_path / "good", tmp_path / "bad"
    argvs = [
        [*common, "fusion.alpha=0,1", f"hydra.sweep.dir={good}"],
        [*common, "fusion.alpha=2", f"hydra.sweep.dir={bad}"],
    ]
    env = {**os.environ, "VISA_CACHE": str(tmp_path / "cache")}
    (ok, failed), _ = run_in_one_process(argvs, cwd=REPO, env=env, timeout=600)
    assert ok["code"] == 0, ok["stderr"][-3000:]
    assert f"sweep: 2 job(s) in {good}" in ok["stdout"]
    assert re.search(r"fusion\.alpha=0: R@1 \d+\.\d -> \d+\.\d \(" + re.escape(str(good / "0")), ok["stdout"])
    assert f"each job's printed output: {good}/.submitit/<job id>_0_log.out" in ok["stdout"]
    logs = sorted((good / ".submitit").glob("*_0_log.out"))
    assert len(logs) == 2 and all("R@1" in log.read_text() for log in logs)
    assert not (good / ".submitit" / "%j").exists()
    assert failed["code"] == 1 and "Traceback" not in failed["stderr"]
    (line,) = failed["stderr"].strip().splitlines()
    assert re.fullmatch(
        r"error: sweep job \d+ failed: fusion\.alpha=2 is outside \[0, 1\] \(its output: "
        + re.escape(str(bad / ".submitit"))
        + r"/\d+_0_log\.err, \.out beside it\)",
        line,
    ), line


# -- unknown keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["+foo=1"], "+foo: the config has no key foo; its keys: retrieval, "),
        (["foo=1"], "foo: the config has no key foo; "),
        (["+rerankr=demo"], "+rerankr: the config has no key rerankr; did you mean reranker?"),
        (
            ["+questions.nmu=1"],
            "+questions.nmu: questions has no key nmu; did you mean questions.num? its keys",
        ),
        (
            ["-m", "+questions.nmu=1,2"],
            "+questions.nmu: questions has no key nmu; did you mean questions.num?",
        ),
        (
            ["-m", "questions.nmu=1,2"],
            "questions.nmu: questions has no key nmu; did you mean questions.num?",
        ),
        (
            ["++retreival.top_k=3"],
            "++retreival.top_k: the config has no key retreival; did you mean retrieval?",
        ),
        (["+top_k=3"], "+top_k: the config has no key top_k; did you mean retrieval.top_k?"),
        (["+shard.idle=1"], "+shard.idle: shard has no key idle; did you mean shard.idle_seconds?"),
    ],
)
def test_unknown_keys_are_refused_before_hydra_with_the_nearest_key(argv, message):
    with pytest.raises(VisaError) as e:
        check_command_line(argv)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_an_unknown_key_is_named_without_its_value():
    """The value may be a secret under a name the secret check does not know."""
    with pytest.raises(VisaError) as e:
        check_command_line(["+openai=sk-never-seen"])
    assert "never-seen" not in str(e.value)


def test_known_keys_groups_and_hydra_overrides_pass():
    argv = [
        "-m", "dataset.limit=2", "+backbone.batch_size=4", "experiment=coco_siglip", "+experiment=x",
        "sweep=top_k", "hydra/launcher=local", "hydra.run.dir=/tmp/x", "~normalizer", "recall_at=[1,5]",
        "questions.num=1,2", "retrieval.top_k=3", "--cfg", "job",
    ]  # fmt: skip
    assert check_command_line(argv) == argv


def test_valid_keys_come_from_the_structured_config(monkeypatch):
    """A group added to the schema is a valid key without any other change."""
    from dataclasses import make_dataclass

    from omegaconf import MISSING

    import visa.entry

    assert check_command_line(["reranker=none"]) == ["reranker=none"]  # a group of the schema
    with pytest.raises(VisaError):
        check_command_line(["+ranker=demo"])
    extended = make_dataclass("Extended", [("ranker", object, MISSING)], bases=(VisaConfig,))
    monkeypatch.setattr(visa.entry, "VisaConfig", extended)
    assert check_command_line(["+ranker=demo"]) == ["+ranker=demo"]


def test_a_key_the_chosen_part_lacks_names_the_options_that_take_it():
    from hydra.errors import HydraException

    from visa.entry import part_key_line

    with pytest.raises(HydraException) as e:
        compose_cfg(["normalizer.bank=demo"])
    assert part_key_line(e.value) == (
        "normalizer.bank=demo: the chosen normalizer (visa.method.normalizers.NoNormalizer) sets no key "
        "bank; choose a normalizer that takes it: normalizer=dn|nnn|qb_norm "
        "(normalizer=dn normalizer.bank=demo)"
    )
    with pytest.raises(HydraException) as e:
        compose_cfg(["dataset.limt=2"])
    assert part_key_line(e.value).endswith("sets no key limt; did you mean dataset.limit?")
    cfg = compose_cfg(["+normalizer.bank=demo"])  # the + form: the part's own check says the same
    with pytest.raises(VisaError, match=r"valid keys: \(none\); choose a normalizer that takes it: "):
        check_part(cfg.normalizer, "normalizer")


# -- the README's keys and defaults ------------------------------------------------------------------------
def _readme_section(title_start: str, title_end: str) -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index(title_start) : text.index(title_end)]


def _overrides_table() -> list[tuple[list[str], str]]:
    """(keys, default) of each row of the README's common-overrides table."""
    rows = []
    for line in _readme_section("### Common overrides", "### Reproduce").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1]))
    return rows


def _stated(default: str) -> tuple[str, str | None]:
    """("20", "5") from "20 (demo: 5)"; other remarks in brackets left out."""
    demo = re.search(r"\(demo: ([^)]+)\)", default)
    plain = re.sub(r"\s*\([^)]*\)", "", default).strip().strip("`")
    return plain, demo.group(1).strip() if demo else None


def test_every_key_in_the_readme_overrides_table_exists_with_its_default():
    cfg = compose_cfg([])
    raw = OmegaConf.to_container(cfg, resolve=False)
    schema = OmegaConf.structured(VisaConfig)
    rows = _overrides_table()
    assert len(rows) >= 15
    for keys, default in rows:
        if default.startswith("(") or "environment" in " ".join(keys):
            continue
        plain, demo = _stated(default)
        values = [v.strip() for v in plain.split(",")] if len(keys) > 1 else [plain]
        for key, value in zip(keys, values):
            if key in cfg.hydra.runtime.choices:  # a group: its default option
                assert cfg.hydra.runtime.choices[key] == value, key
                continue
            node: object = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"README names {key}, which the config lacks"
                node = node[part]
            env = re.findall(r"\$([A-Z_]+)", value)
            if env:  # `$VISA_DATA` or `./data`: the config reads that variable
                assert all(f"oc.env:{name}" in str(node) for name in env), (key, node)
                continue
            composed = OmegaConf.select(cfg, key)
            if isinstance(composed, (DictConfig,)) or OmegaConf.is_list(composed):
                composed = OmegaConf.to_container(composed)
            expected = yaml.safe_load(demo if demo is not None else value)
            assert composed == expected, (
                f"README: {key} defaults to {default}; the demo config has {composed}"
            )
            if demo is not None:  # the value before "(demo: ...)" is the schema's own default
                assert OmegaConf.select(schema, key) == yaml.safe_load(value), key


def test_the_readme_groups_table_lists_every_group_of_conf():
    table = _readme_section("## Configuration", "### Where things live")
    listed = {
        g for cell in re.findall(r"^\| ([^|]+) \|", table, re.M) for g in re.findall(r"`([\w/]+)/`", cell)
    }
    groups = {d.name for d in (REPO / "conf").iterdir() if d.is_dir() and d.name != "hydra"}
    assert listed == groups | {"hydra/launcher"}


def test_every_key_the_readme_names_exists():
    """Each `key=value` or `group.key` in the README's prose (outside "Changed in this version", which
    names old forms on purpose) is a key of the config: a run setting, a group, or a setting that some
    option of the group sets."""
    from visa.config import options_taking
    from visa.entry import check_key

    text = (REPO / "README.md").read_text()
    text = text[: text.index("### Changed in this version")] + text[text.index("## The stage cache") :]
    groups = {d.name for d in (REPO / "conf").iterdir() if d.is_dir()}
    named = set()
    for token in re.findall(r"`([^`\s]+)`", text):
        key = token.split("=", 1)[0]
        if token.startswith(("+", "~", "$")) or not re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)*", key):
            continue
        top = key.split(".")[0]
        if top not in groups and top not in {f.name for f in VisaConfig.__dataclass_fields__.values()}:
            continue
        named.add(key)
        check_key(token, key, [REPO / "conf"])  # a run setting (nested) or a group
        if top in groups and "." in key and top != "hydra":
            sub = key.split(".")[1]
            assert options_taking(top, sub), f"README names {key}; no option of conf/{top}/ sets {sub}"
    assert {"retrieval.top_k", "questions.constrained", "normalizer.bank", "describer.ocr"} <= named


# -- the terminal table -------------------------------------------------------------------------------------
def test_the_table_shows_the_datasets_own_metrics():
    from visa.run import format_table

    metrics = {f"{p}/R@{k}": 10.0 * k for p in ("base", "rerank") for k in (1, 5, 10)}
    for p in ("base", "rerank"):
        metrics |= {f"{p}/mAP@50": 45.25, f"{p}/nDCG@50": 60.0, f"{p}/MRR": 0.8125, f"{p}/mAP@100": 40.0}
    header, base, _ = format_table(metrics, [1, 5, 10]).splitlines()
    assert header.split() == ["R@1", "R@5", "R@10", "mAP@50", "nDCG@50", "MRR", "mAP@100"]
    assert base.split() == ["backbone", "10.0", "50.0", "100.0", "45.2", "60.0", "0.812", "40.0"]
    plain = {k: v for k, v in metrics.items() if "@" in k and k.split("/")[1].startswith("R@")}
    assert format_table(plain, [1, 5, 10]).splitlines()[0].split() == ["R@1", "R@5", "R@10"]


def test_faiss_loader_says_nothing_on_import():
    import logging

    assert logging.getLogger("faiss.loader").getEffectiveLevel() >= logging.WARNING
