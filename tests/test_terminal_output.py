"""What a person at a terminal sees, and what a pipe gets: real ``templ`` runs on a pty (python's ``pty``) and on
pipes, their output read back.

On a terminal: the progress display while conformers are embedded (conformers embedded of asked, per isomer,
with the time so far), log lines printed above the progress bar (never drawn over it), a failed query in one
line without trace ids, and a summary whose rate says what it counts beside the run's whole time. Outside a
terminal: no per-batch lines at the default level; the JSON log file keeps them when asked.
"""

from __future__ import annotations

import json
import re
import subprocess

from processes import run_on_a_terminal
from templ_runs import TEMPL

QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"
TWO_ISOMERS = "O=C(NC(C)c1cccnc1)c1ccc(F)cc1OC"  # one unassigned stereocentre: two isomers embedded
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(*args: object, columns: int = 200) -> tuple[int, str]:
    """Run ``templ args`` on a pty ``columns`` wide; (exit code, raw output as text)."""
    code, output = run_on_a_terminal([*TEMPL, *map(str, args)], columns)
    return code, output.decode(errors="replace")


def screen_lines(raw: str) -> list[str]:
    """The text as the terminal shows it, line by line: styles dropped; a carriage return starts the line over,
    so what follows it is a line of its own here."""
    return [piece for piece in re.split(r"[\r\n]", ANSI.sub("", raw)) if piece.strip()]


def test_on_a_terminal_embedding_shows_conformers_embedded_of_asked_per_isomer_and_the_time(template_sdf, tmp_path):
    code, raw = on_a_terminal("select-best", "-t", template_sdf, "-q", TWO_ISOMERS, "-n", "6", "-w", "1",
                              "-o", tmp_path / "best.sdf", "--no-metrics-server")
    assert code == 0, raw[-3000:]
    lines = screen_lines(raw)
    for isomer in (1, 2):
        shown = [line for line in lines if line.startswith(f"isomer {isomer}: embedding")]
        assert shown, lines
        assert re.search(r"6/6 conformers embedded \d+:\d\d:\d\d$", shown[-1].rstrip()), shown[-1]
    (rate,) = [line for line in lines if line.startswith("conformers ")]
    assert re.search(r"; scored [\d,]+ conformers/s;", rate), rate
    (time_line,) = [line for line in lines if line.startswith("time: ")]
    assert re.fullmatch(r"time: [\d.]+ s in all \(embedding [\d.]+ s, scoring [\d.]+ s\)", time_line.strip())


def test_on_a_terminal_a_failed_query_is_one_line_printed_above_the_progress_bar(template_sdf, tmp_path):
    queries = tmp_path / "q.smi"
    queries.write_text(f"{QUERY} good\nC1CC( broken\n[U]CCCC uranium\n")
    code, raw = on_a_terminal("screen", "-t", template_sdf, "-q", queries, "-o", tmp_path / "out", "-n", "4",
                              "-w", "1", "--no-metrics-server")
    assert code == 0, raw[-3000:]
    lines = screen_lines(raw)
    failed = [line for line in lines if "campaign.query_finished" in line]
    # each at the start of a line of its own: a line drawn over the bar would begin with the bar's text
    assert len(failed) == 2 and all(line.startswith("[warning") for line in failed), failed
    assert "query_id=broken reason=invalid_smiles detail=" in failed[0] + failed[1]
    assert "query_id=uranium reason=unsupported_element detail=" in failed[0] + failed[1]
    assert "trace_id" not in raw and "span_id" not in raw


def test_outside_a_terminal_per_batch_lines_are_left_out_and_the_log_file_keeps_them_when_asked(template_sdf,
                                                                                                   tmp_path):
    args = ["select-best", "-t", template_sdf, "-q", QUERY, "-n", "40", "-w", "2", "-o", tmp_path / "best.sdf",
            "--no-metrics-server"]
    piped = subprocess.run([*TEMPL, *map(str, args)], capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert piped.returncode == 0, piped.stderr
    events = [json.loads(line)["event"] for line in piped.stderr.splitlines() if line.startswith("{")]
    assert "select_best.done" in events and "select_best.batch_done" not in events, events

    log = tmp_path / "templ.log"
    logged = subprocess.run([*TEMPL, *map(str, args), "--log-file", log, "--log-level", "debug"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert logged.returncode == 0, logged.stderr
    batches = [line for line in map(json.loads, log.read_text().splitlines())
               if line["event"] == "select_best.batch_done"]
    assert len(batches) > 1 and all(line["level"] == "debug" for line in batches)
