import io

from qmixprune.progress import eta, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_per_block_with_eta_when_not_a_terminal():
    ticks = iter(range(100))
    out = io.StringIO()
    with progress(10, "search", every=4, stream=out, clock=lambda: float(next(ticks))) as update:
        for i in range(10):
            update(1, f"best {i}")
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["4/10", "8/10", "10/10"]
    assert "best 3" in lines[0] and "eta" in lines[0] and "elapsed" in lines[0]
    assert "eta" not in lines[-1]  # finished


def test_early_stop_prints_the_last_state_and_quiet_prints_nothing():
    out = io.StringIO()
    with progress(100, "search", every=10, stream=out, clock=lambda: 0.0) as update:
        for _ in range(13):
            update()
    assert out.getvalue().splitlines()[-1].startswith("search 13/100")
    quiet = io.StringIO()
    with progress(5, "distill", quiet=True, stream=quiet) as update:
        update()
    assert quiet.getvalue() == ""


def test_terminal_gets_a_bar_with_eta():
    out = _Tty()
    with progress(3, "distill", stream=out) as update:
        update(1, "val 0.5")
    assert "distill" in out.getvalue() and "eta" in out.getvalue()


def test_eta_is_the_average_pace():
    assert eta(0, 10, 5.0) is None
    assert eta(2, 10, 4.0) == 16.0
    assert eta(10, 10, 9.0) == 0.0
