"""The pipeline's printed results table shows every number whole, whatever the width: in a log file or a
pipe (not a terminal) and on a terminal narrower than the table (issue #28: "16.2…", "meth…" at 80 columns)."""

import json
import re

import pytest

from cguide.pipeline import print_report


def _rows(options: bool) -> list[dict]:
    base = {"method": "classifier", "sampler": "ddim", "steps": 50, "t_lo": 0.0, "t_hi": 1.0, "schedule": "constant",
            "sigma_lo": None, "sigma_hi": None, "entropy_cap": None, "grad_at": "x_t", "grad_space": "x_t"}
    rows = []
    for i, (variant, scale) in enumerate([("score", 0.0), ("seed_literal", 4.0), ("mean_shift_large", 12.5)]):
        rows.append({**base, "point": f"p{i}", "variant": variant, "scale": scale, "fid_judge": 116.2345 + i,
                     "fid_judge_lo": 110.01 + i, "fid_judge_hi": 121.789 + i, "interval_level": 0.95,
                     "kid_judge": -0.0123 * (i + 1), "is_judge": 5.9837 + i, "accuracy": 0.096 + i / 10,
                     "guide_confidence": 0.105 + i / 10, "precision_judge": 0.62, "recall_judge": 0.984})
    if not options:
        return rows
    rows.append({**base, "point": "p3", "variant": "score", "scale": 2.0, "schedule": "cosine_rev", "sigma_lo": 0.3,
                 "sigma_hi": 4.0, "entropy_cap": 3.0, "grad_space": "x0", "fid_judge": 1234.5678,
                 "fid_judge_lo": 1200.0, "fid_judge_hi": 1299.9, "kid_judge": 0.5603, "is_judge": 7.1, "accuracy": 0.9,
                 "guide_confidence": 0.941, "precision_judge": 0.7, "recall_judge": 0.93})
    return rows


# (stdout a terminal, its width, a row with classifier-term options, boxed tables expected: 0 = a plain table)
CASES = [(False, 80, True, 0), (False, 20, False, 0), (True, 220, False, 1), (True, 80, False, 3), (True, 140, True, 3),
         (True, 80, True, 0), (True, 40, False, 0)]


@pytest.mark.parametrize("terminal,width,options,boxed", CASES)
def test_every_number_and_name_is_printed_whole(tmp_path, capsys, monkeypatch, terminal, width, options, boxed):
    """Boxed tables on a terminal, split over several tables (each led by method, scale, variant, options)
    when one is too wide; one plain table when not a terminal, or when even those key columns do not fit."""
    rows = _rows(options)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    monkeypatch.setenv("NO_COLOR", "1")
    print_report(tmp_path)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # a terminal's bold headers: styles only
    assert "…" not in out and f"guidance sweep ({len(rows)} points; [95 % intervals])" in out
    lines = out.splitlines()
    for r in rows:
        cells = [r["method"], r["variant"], f"{r['scale']:.3f}"] + [f"{r[k]:.3f}" for k in
                                                                    ("fid_judge", "kid_judge", "is_judge", "accuracy",
                                                                     "guide_confidence", "precision_judge",
                                                                     "recall_judge")]
        cells += [f"[{r['fid_judge_lo']:.3g},", f"{r['fid_judge_hi']:.3g}]"]  # FID's interval, whole
        for cell in cells:
            assert any(cell in line.split() or f" {cell} " in line for line in lines), (cell, out)
    if options:
        assert "cosine_rev, sigma [0.3, 4], entropy (cap 3), x0" in out  # the options column, whole
    for title in ("method", "variant", "FID_judge", "KID_judge", "IS_judge", "accuracy", "guide_conf", "precision_judge",
                  "recall_judge"):
        assert any(title in line.replace("┃", " ").split() for line in lines), title
    # the paths on one line each
    assert f"results: {tmp_path / 'results.csv'}  {tmp_path / 'results.jsonl'}" in out
    titles = ["method", "scale", "variant", *(["options"] if options else []), "FID_judge", "KID_judge", "IS_judge",
              "accuracy", "guide_conf", "precision_judge", "recall_judge"]
    if boxed:  # tables that fit the terminal, each led by the key columns
        table_lines = [line for line in lines if line[:1] in "┏┃┡│└"]
        assert max(map(len, table_lines)) <= width
        heads = [line for line in lines if line.startswith("┃")]
        assert len(heads) == boxed
        assert all(h.replace("┃", " ").split()[:3] == ["method", "scale", "variant"] for h in heads)
        keys = titles[:3 + options]  # repeated in each table
        assert sorted(t for h in heads for t in h.replace("┃", " ").split()) == sorted(titles + keys * (boxed - 1))
    else:  # one plain table, each row on one line
        assert "┃" not in out
        assert next(line for line in lines if line.split()[:1] == ["method"]).split() == titles
        row = next(line for line in lines if "12.500" in line)
        assert row.split() == ["classifier", "12.500", "mean_shift_large", *(["-"] if options else []), "118.234",
                               "[112,", "124]", "-0.037", "7.984", "0.296", "0.305", "0.620", "0.984"]


def test_a_solvers_sweep_shows_sampler_and_steps(tmp_path, capsys, monkeypatch):
    rows = _rows(False)
    rows[1].update(sampler="heun", steps=10)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    print_report(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.split()[:1] == ["method"]).split()[:5] == \
        ["method", "scale", "variant", "sampler", "steps"]
    assert next(line for line in lines if "heun" in line).split()[3:5] == ["heun", "10"]
