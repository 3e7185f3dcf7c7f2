"""Bad input and faults: exit 2 and one line naming the problem, before any work, with
nothing written, deleted or left half-done (issue 14's list, one case per row)."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import write_fake_cifar

import qmixprune as q
from qmixprune import files
from qmixprune.cli import main
from qmixprune.config import build
from qmixprune.errors import UserError
from qmixprune.models import create
from qmixprune.run import outdir
from qmixprune.run.compress import CompressConfig


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    q.save(create("vgg16", width=0.125), path)
    return path


def _compress(model, out, *extra):
    return ["compress", str(model), "--target-flops", "0.5", "--episodes", "2", "--epochs", "1"] + [
        "--no-export",
        "--quiet",
        "-o",
        str(out),
        *extra,
    ]


def _tree(root):
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _marked(path, *names):
    """A folder as an earlier run left it: our marker and some of our outputs."""
    path.mkdir(parents=True, exist_ok=True)
    (path / outdir.MARKER).write_text("{}\n")
    for name in names:
        (path / name).write_text('{"earlier": true}\n')
    return path


def _images(root, classes, n=6, size=8):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def _table(model, x):
    """A latency table shaped like `qmixprune profile`'s for ``model`` (timings made up)."""
    from qmixprune.flops import layer_table

    mods = dict(model.named_modules())
    layers = {}
    for r in layer_table(model, x):
        m = mods[r.name]
        ci, co = (m.in_features, m.out_features) if r.kind == "Linear" else (0, 0)
        if r.kind != "Linear":
            ci, co = m.in_channels, m.out_channels
        layers[r.name] = {"in": [ci], "out": [co], "ms": [[1.0]], "depthwise": False}
    return {"total_ms": 1.0, "round_to": 1, "batch": 1, "threads": None, "layers": layers}


def _setup(case, tmp, model_file, monkeypatch):
    """The argv of one case, with the files it needs made under ``tmp``."""
    out = tmp / "out"
    if case == "overwrite_input_folder":  # the input model and an unrelated folder inside OUT
        victim = _marked(tmp / "victim")
        (victim / "teacher.safetensors").write_bytes(model_file.read_bytes())
        (victim / "unrelated").mkdir()
        (victim / "unrelated" / "keep.txt").write_text("mine")
        return _compress(victim / "teacher.safetensors", victim, "--overwrite")
    if case == "overwrite_cwd":
        work = _marked(tmp / "work", "report.json")
        monkeypatch.chdir(work)
        return _compress(model_file, ".", "--overwrite")
    if case == "overwrite_not_ours":
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
        return _compress(model_file, out, "--overwrite")
    if case == "overwrite_then_bad_data":  # a good earlier result survives a failing rerun
        _marked(out, "report.json", "model.safetensors")
        nodata = tmp / "nodata"
        return _compress(model_file, out, "--overwrite", "--data", "cifar10", "--data-dir", nodata)
    if case == "locked":  # another live run writes into OUT
        _marked(out, "report.json")
        (out / outdir.LOCK).write_text(json.dumps({"pid": os.getppid()}))
        return _compress(model_file, out, "--overwrite")
    if case == "cifar100_for_10_classes":
        write_fake_cifar(tmp / "c100", "cifar100")
        return _compress(model_file, out, "--data", "cifar100", "--data-dir", tmp / "c100")
    if case == "one_class_folder":
        _images(tmp / "imgs", 1)
        return _compress(model_file, out, "--data", "imagefolder", "--data-dir", tmp / "imgs")
    if case == "non_image_png":
        _images(tmp / "imgs", 2)
        (tmp / "imgs" / "c1" / "broken.png").write_bytes(b"this is no image")
        return _compress(model_file, out, "--data", "imagefolder", "--data-dir", tmp / "imgs")
    if case in ("batch_too_big", "lr_fast", "episodes_ten", "target_quoted"):
        text = {
            "batch_too_big": "distill:\n  batch_size: 100000\n",
            "lr_fast": "distill:\n  lr: fast\n",
            "episodes_ten": 'search:\n  episodes: "ten"\n',
            "target_quoted": 'target_flops: "0.4"\n',
        }[case]
        (tmp / "c.yaml").write_text(text)
        argv = _compress(model_file, out, "--config", tmp / "c.yaml")
        flag = {"target_quoted": "--target-flops", "episodes_ten": "--episodes"}.get(case)
        if flag:  # the file's value, not the flag's
            i = argv.index(flag)
            argv = argv[:i] + argv[i + 2 :]
        return argv
    if case in ("table_other_width", "table_other_model"):
        other = create("vgg16", width=0.25) if case == "table_other_width" else create("resnet56")
        path = tmp / "table.json"
        path.write_text(json.dumps(_table(other, torch.zeros(1, 3, 32, 32))))
        return _compress(model_file, out, "--target-latency", "0.5", "--latency-table", path)
    if case == "resume_other_config":
        _marked(out)
        (out / "config.json").write_text(json.dumps({"target_flops": 0.4}))
        return _compress(model_file, out, "--resume")
    if case == "resume_truncated_checkpoint":
        _marked(out)
        buf = tmp / "full.pt"
        torch.save({"student": create("vgg16", width=0.125).state_dict()}, buf)
        (out / "distill_checkpoint.pt").write_bytes(buf.read_bytes()[:5000])
        buf.unlink()
        torch.save({"episode": 3}, out / "search_checkpoint.pt")  # the search's is fine
        return _compress(model_file, out, "--resume")
    if case == "resume_nothing":  # killed before the first checkpoint
        _marked(out, "search_log.jsonl")
        return _compress(model_file, out, "--resume")
    if case == "target_latency_zero":
        return _compress(model_file, out, "--target-latency", "0")
    if case == "overwrite_and_resume":
        _marked(out, "report.json")
        return _compress(model_file, out, "--overwrite", "--resume")
    if case in ("export_to_folder", "prune_to_folder", "profile_to_folder"):
        out.mkdir()
        cmd = case.split("_")[0]
        extra = ["--ratio", "0.5"] if cmd == "prune" else []
        return [cmd, str(model_file), *extra, "-o", str(out)]
    if case == "bench_json_folder":
        out.mkdir()
        return ["bench", str(tmp / "a.onnx"), "--json", str(out)]
    if case in ("empty_pt", "random_pt", "torchscript_untrusted"):
        path = tmp / "m.pt"
        if case == "empty_pt":
            path.write_bytes(b"")
        elif case == "random_pt":
            path.write_bytes(np.random.default_rng(0).bytes(999))
        else:
            m = create("vgg16", width=0.125).eval()
            torch.jit.trace(m, torch.zeros(1, 3, 32, 32)).save(str(path))
        return ["count", str(path)]
    if case == "wrong_arch":
        torch.save(create("vgg16", width=0.25).state_dict(), tmp / "sd.pt")
        return ["count", str(tmp / "sd.pt"), "--arch", "resnet56"]
    if case == "wrong_width":
        torch.save(create("vgg16", width=0.25).state_dict(), tmp / "sd.pt")
        return ["count", str(tmp / "sd.pt"), "--arch", "vgg16"]
    raise AssertionError(case)


CASES = [
    ("overwrite_input_folder", "holds an input of this run"),
    ("overwrite_cwd", "the working directory"),
    ("overwrite_not_ours", "qmixprune did not create it"),
    ("overwrite_then_bad_data", "cifar10 not found"),
    ("locked", "another qmixprune run"),
    ("cifar100_for_10_classes", "100 classes but the model has 10 outputs"),
    ("one_class_folder", "1 class"),
    ("non_image_png", "broken.png is not an image"),
    ("batch_too_big", "fewer than one batch"),
    ("lr_fast", "config.distill.lr must be a number"),
    ("episodes_ten", "config.search.episodes must be a whole number"),
    ("target_quoted", "config.target_flops must be a number"),
    ("table_other_width", "profiled at another width"),
    ("table_other_model", "made for another model"),
    ("resume_other_config", "another configuration"),
    ("resume_truncated_checkpoint", "distill_checkpoint.pt is damaged"),
    ("resume_nothing", "nothing to resume: no search_checkpoint.pt"),
    ("target_latency_zero", "target_latency must be in (0, 1)"),
    ("overwrite_and_resume", "contradict"),
    ("export_to_folder", "is a folder"),
    ("prune_to_folder", "is a folder"),
    ("profile_to_folder", "is a folder"),
    ("bench_json_folder", "is a folder"),
    ("empty_pt", "is empty"),
    ("random_pt", "neither a PyTorch file nor a pickle"),
    ("torchscript_untrusted", "TorchScript archive"),
    ("wrong_arch", "it fits --arch vgg16 --width 0.25"),
    ("wrong_width", "it fits --arch vgg16 --width 0.25"),
]


@pytest.mark.parametrize("case,message", CASES, ids=[c for c, _ in CASES])
def test_bad_input_exit_2_one_line_nothing_touched(
    case, message, tmp_path, model_file, capsys, monkeypatch
):
    argv = [str(a) for a in _setup(case, tmp_path, model_file, monkeypatch)]
    before = _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and len(err[0]) < 400, err
    assert err[0].startswith("qmixprune: error:")
    assert _tree(tmp_path) == before  # nothing written, nothing deleted


def test_only_rank_0_speaks_under_torchrun(tmp_path, model_file, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    monkeypatch.setenv("RANK", "1")
    assert main(_compress(model_file, tmp_path / "out")) == 2  # every rank stops ...
    assert capsys.readouterr().err == ""  # ... and only rank 0 says why
    monkeypatch.setenv("RANK", "0")
    assert main(_compress(model_file, tmp_path / "out")) == 2
    assert "not empty" in capsys.readouterr().err


def test_interrupt_says_how_to_resume(tmp_path, model_file, capsys, monkeypatch):
    import qmixprune.run.compress as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_stages", interrupted)
    out = tmp_path / "out"
    assert main(_compress(model_file, out, "--allow-untrained")) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert not (out / outdir.LOCK).exists()  # the lock goes with the run
    assert (out / outdir.MARKER).is_file()


def test_count_through_torchscript(tmp_path, capsys):
    m = create("vgg16", width=0.125).eval()
    x = torch.zeros(1, 3, 32, 32)
    torch.jit.trace(m, x).save(str(tmp_path / "ts.pt"))
    assert main(["count", str(tmp_path / "ts.pt"), "--trust-pickle"]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1]
    assert total.startswith(f"total {q.count(m, x)[0]:,} MACs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("cmd", ["export", "prune", "profile"])
def test_read_only_folder_refused_before_work(tmp_path, capsys, cmd):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    extra = ["--ratio", "0.5"] if cmd == "prune" else []
    try:
        assert main([cmd, "vgg16", "--width", "0.125", *extra, "-o", str(ro / "f")]) == 2
    finally:
        ro.chmod(stat.S_IRWXU)
    assert "permission denied" in capsys.readouterr().err


def test_unwritable_paths_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as a non-root user sees it
    with pytest.raises(UserError, match="permission denied"):
        files.check_writable_file(tmp_path / "f.onnx")
    with pytest.raises(UserError, match="permission denied"):
        outdir.check(tmp_path / "out", overwrite=False, resume=False)


def test_claim_marks_locks_and_clears_only_ours(tmp_path):
    out = _marked(tmp_path / "out", "report.json", "model.onnx")
    (out / "notes.txt").write_text("the user's")
    (out / "sub").mkdir()
    (out / ".model.onnx.x1y2.onnx").write_bytes(b"")  # export's temp, left by a kill -9
    outdir.check(out, overwrite=True, resume=False)
    with outdir.claim(out, overwrite=True, resume=False):
        assert json.loads((out / outdir.LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match="another qmixprune run"):  # a second run
            outdir.check(out, overwrite=True, resume=False)
        with pytest.raises(UserError, match="another qmixprune run"):
            with outdir.claim(out, overwrite=False, resume=True):
                pass
    assert sorted(p.name for p in out.iterdir()) == [outdir.MARKER, "notes.txt", "sub"]


def test_stale_lock_and_temps_of_a_killed_run_are_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = _marked(tmp_path / "out", "search_log.jsonl")
    (out / outdir.LOCK).write_text(json.dumps({"pid": dead.pid}))
    (out / ".report.json.abc.tmp").write_bytes(b"")  # files.write_bytes' temp
    outdir.check(out, overwrite=False, resume=True)
    with outdir.claim(out, overwrite=False, resume=True):
        assert not (out / ".report.json.abc.tmp").exists()
        assert (out / "search_log.jsonl").exists()  # resume keeps the outputs
    assert not (out / outdir.LOCK).exists()


def test_fresh_out_gets_marker(tmp_path):
    out = tmp_path / "a" / "b"
    outdir.check(out, overwrite=False, resume=False)
    with outdir.claim(out, overwrite=False, resume=False):
        pass
    assert (out / outdir.MARKER).is_file()


def test_files_take_the_umask(tmp_path):
    from qmixprune.files import write_bytes

    old = os.umask(0o027)
    try:
        write_bytes(tmp_path / "a.json", b"{}")
        q.export_onnx(
            create("alexnet", width=0.125), tmp_path / "a.onnx", torch.zeros(1, 3, 32, 32)
        )
    finally:
        os.umask(old)
    for name in ("a.json", "a.onnx"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_export_warns_on_input_dependent_control_flow(tmp_path):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.mean() > 10:  # never true for the random parity inputs
                return x * 2
            return x - 1

    with pytest.warns(UserWarning, match="control flow depends on its input"):
        q.export_onnx(Branchy(), tmp_path / "b.onnx", torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    "values,message",
    [
        ({"distill": {"lr": "fast"}}, "config.distill.lr must be a number"),
        ({"search": {"episodes": "ten"}}, "config.search.episodes must be a whole number"),
        ({"target_flops": "0.4"}, "without quotes"),
        ({"export": 1}, "config.export must be true or false"),
        ({"search": {"episodes": 2.5}}, "whole number"),
        ({"importance": 3}, "config.importance must be a string"),
    ],
)
def test_config_types(values, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        build(CompressConfig, values)


def test_config_types_accept_what_fits():
    cfg = build(CompressConfig, {"target_flops": None, "distill": {"lr": 1}, "seed": 3})
    assert cfg.target_flops is None and cfg.distill.lr == 1.0 and isinstance(cfg.distill.lr, float)


def test_api_checks_classes_before_writing(tmp_path):
    from qmixprune.data import load_data
    from qmixprune.run.compress import compress

    with pytest.raises(UserError, match="10 classes but the model has 5 outputs"):
        compress(
            create("vgg16", width=0.125, num_classes=5), load_data("digits"), out=tmp_path / "o"
        )
    assert not (tmp_path / "o").exists()


def test_resume_may_change_the_device_only(tmp_path):
    recorded = {"device": "cuda:0", "keep_checkpoints": False, "distill": {"lr": 0.01}}
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    same = {"device": "cuda:1", "keep_checkpoints": True, "distill": {"lr": 0.01}}
    outdir.check_same_config(tmp_path, "config.json", same)  # another rank's GPU: fine
    with pytest.raises(UserError, match=r"distill.lr: 0.01 there, 0.02 now"):
        outdir.check_same_config(tmp_path, "config.json", {**same, "distill": {"lr": 0.02}})
