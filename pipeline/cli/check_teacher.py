"""``pipeline check-teacher``: does the configured teacher answer? One short request, its latency and tokens."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..config import Decoding
from ..errors import InputError, TeacherError
from ..teachers import ChatRequest, make_teacher
from .common import BackendOpt, BaseUrlOpt, ConfigOpt, ModelOpt, SetOpt, console, fail, load


def check_teacher_command(config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt,
                          teacher: Optional[str] = BackendOpt, model: Optional[str] = ModelOpt,
                          base_url: Optional[str] = BaseUrlOpt) -> None:
    """Send one short request to the configured teacher and print its answer, latency and token counts."""
    try:
        cfg = load(config, sets, **{"teacher.backend": teacher, "teacher.model": model,
                                    "teacher.base_url": base_url})
        t0 = time.time()
        # One request answers now or not at all: a batch-mode teacher is checked online (same key, model, URL).
        tch = make_teacher(cfg.teacher.model_copy(update={"mode": "online"}))
        loaded = time.time() - t0
        t0 = time.time()
        [c] = tch.generate([ChatRequest([{"role": "user", "content": "Name three primary colours."}],
                                        Decoding(temperature=0.0, top_p=1.0, max_tokens=48))])
        tch.close()
    except (InputError, TeacherError) as e:
        fail(e)
    console.print(f"teacher [bold]{cfg.teacher.backend}[/] model [bold]{tch.model_name}[/] answered in "
                  f"{time.time() - t0:.2f} s (start-up {loaded:.2f} s), {c.prompt_tokens} tokens in, "
                  f"{c.completion_tokens} out, finish_reason={c.finish_reason}")
    typer.echo(c.text.strip())
    if not c.text.strip():
        raise typer.Exit(1)
