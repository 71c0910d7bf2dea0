"""Parameter counts from config.json, checked against the published totals of real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.plan.size import from_config, from_parameters, model_shape

DATA = Path(__file__).parent / "data"

# (config.json fields as published on the Hugging Face hub, the checkpoint's parameter count)
CASES = {
    "meta-llama/Llama-2-7b-hf": ({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                                  "vocab_size": 32000, "tie_word_embeddings": False}, 6_738_415_616),
    "mistralai/Mistral-7B-v0.1 (GQA)": ({"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                                         "num_attention_heads": 32, "num_key_value_heads": 8,
                                         "intermediate_size": 14336, "vocab_size": 32000,
                                         "tie_word_embeddings": False}, 7_241_732_096),
    "gpt2-xl (tied)": ({"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257,
                        "n_positions": 1024}, 1_557_611_200),
    "EleutherAI/pythia-160m": ({"model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12,
                                "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50304,
                                "tie_word_embeddings": False}, 162_322_944),
    "bert-base-uncased": ({"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30522,
                           "max_position_embeddings": 512, "type_vocab_size": 2}, 109_482_240),
    "t5-small": ({"model_type": "t5", "d_model": 512, "d_ff": 2048, "num_heads": 8, "d_kv": 64, "num_layers": 6,
                  "vocab_size": 32128, "feed_forward_proj": "relu"}, 60_506_624),
    "facebook/blenderbot-400M-distill": ({"model_type": "blenderbot", "d_model": 1280, "encoder_layers": 2,
                                          "decoder_layers": 12, "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120,
                                          "decoder_attention_heads": 32, "vocab_size": 8008,
                                          "max_position_embeddings": 128}, 364_802_560),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_analytic_counts_match_the_checkpoints(name: str) -> None:
    config, published = CASES[name]
    assert from_config(config).params == published


def test_a_local_config_json_is_read() -> None:
    shape = model_shape(str(DATA / "gpt2-xl"), None)
    assert shape.params == 1_557_611_200 and shape.layers == 48 and shape.hidden == 1600
    assert shape.method == "config.json (gpt2)"


def test_only_a_count_gives_a_guessed_shape_and_says_so() -> None:
    shape = from_parameters(6.7e9)
    assert shape.params == 6_700_000_000 and "guessed" in shape.method and 3000 < shape.hidden < 5000


def test_unknown_families_ask_for_a_count() -> None:
    with pytest.raises(ValueError, match="spec.model.parameters"):
        from_config({"model_type": "mamba"})


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_meta_device_agrees_with_the_analytic_count(name: str, tmp_path: Path) -> None:
    """Cross-check on transformers' own models, built on the meta device (no weights): shrunk copies of each
    config (2 layers, narrow), so that the check covers the formula, not a lucky total."""
    import json

    import transformers  # noqa: F401 (the train extra: missing, this fails rather than skips)

    from orchestrator.plan.size import from_meta

    config = dict(CASES[name][0])
    for key in ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "encoder_layers"):
        if key in config:
            config[key] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    meta = from_meta(str(tmp_path))
    assert meta is not None and meta.params == from_config(config).params, (meta.params, from_config(config).params)


# Hub model ids: config.json from the local Hugging Face cache, else the Hub where it can be reached.
LLAMA_ID = "meta-llama/Llama-2-7b-hf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached(cache: Path, repo_id: str, config: dict, commit: str = COMMIT, ref: bool = True) -> Path:
    """The hub cache layout: models--ORG--NAME/refs/main names the snapshot holding config.json."""
    import json

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(config))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return repo


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache of our own, offline unless a test says otherwise."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def test_a_hub_id_reads_the_config_from_the_cache_that_hf_home_names(hub_env: Path) -> None:
    config, published = CASES[LLAMA_ID]
    cached(hub_env, LLAMA_ID, config)
    shape = model_shape(LLAMA_ID, None)
    assert shape.params == published and shape.method == "config.json (llama)"
    assert shape.source.startswith("Hugging Face cache ") and COMMIT in shape.source and shape.note is None


def test_hf_hub_cache_wins_and_refs_main_names_the_snapshot(hub_env: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    config, published = CASES[LLAMA_ID]
    repo = cached(other, LLAMA_ID, config)
    newer = repo / "snapshots" / ("f" * 40)  # a newer snapshot that refs/main does not name
    newer.mkdir()
    (newer / "config.json").write_text('{"model_type": "gpt2", "n_embd": 64, "n_layer": 1, "n_head": 1, '
                                       '"vocab_size": 10, "n_positions": 8}')
    assert model_shape(LLAMA_ID, None).params == published
    (repo / "refs" / "main").unlink()  # no ref: the newest snapshot with a config.json
    assert model_shape(LLAMA_ID, None).method == "config.json (gpt2)"


def test_offline_without_a_cached_config_it_says_so(hub_env: Path) -> None:
    from orchestrator.errors import ShardctlError

    guessed = model_shape(LLAMA_ID, 6.7e9, hub=True)
    assert "guessed" in guessed.method and guessed.source == "spec.model.parameters"
    assert guessed.note and "not in the Hugging Face cache" in guessed.note and "HF_HUB_OFFLINE" in guessed.note
    with pytest.raises(ShardctlError, match=r"no config\.json for meta-llama/Llama-2-7b-hf .*HF_HUB_OFFLINE.*"
                                            r"spec\.model\.parameters"):
        model_shape(LLAMA_ID, None, hub=True)


def test_the_plan_says_where_the_shape_came_from(hub_env: Path, tmp_path: Path) -> None:
    from orchestrator.plan.planner import plan
    from orchestrator.plan.report import plan_text
    from tests.helpers import job

    cached(hub_env, LLAMA_ID, CASES[LLAMA_ID][0])
    spec = {"model": {"name_or_path": LLAMA_ID}, "resources": {"nodes": 1, "gpus_per_node": 8, "gpu_memory": "80GiB"},
            "batch": {"micro": 1, "seq_len": 1024}}
    result = plan(job(**spec))
    assert result.as_json()["model"]["source"] == result.shape.source and "Hugging Face cache" in result.shape.source
    assert f"shape from: {result.shape.source}" in plan_text(result, width=400)
    spec["model"] = {"name_or_path": "someone/not-cached", "parameters": 7e9}
    guessed = plan(job(**spec))
    assert guessed.as_json()["model"]["source"] == "spec.model.parameters"
    assert any("no config.json for someone/not-cached" in note for note in guessed.notes)


def test_plan_on_the_command_line_is_one_clear_line_offline(hub_env: Path, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import job

    path = tmp_path / "job.json"
    spec = {"model": {"name_or_path": LLAMA_ID}, "resources": {"nodes": 1, "gpus_per_node": 8, "gpu_memory": "80GiB"}}
    path.write_text(json.dumps(job(**spec).model_dump(mode="json", by_alias=True)))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(path)], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], env={**os.environ}, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    error = [line for line in r.stderr.splitlines() if "no config.json" in line]
    assert len(error) == 1 and "HF_HUB_OFFLINE" in error[0] and error[0].startswith(f"{path}: ")


def test_an_unreachable_hub_is_said_quickly(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    import huggingface_hub  # noqa: F401 (installed with transformers)

    from orchestrator.plan.model_config import find

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    lookup = find(LLAMA_ID, hub=True)
    assert lookup.found is None and lookup.missing and "cannot be reached" in lookup.missing
    assert time.monotonic() - started < 30


class FakeHub:
    """A local HTTP server answering like the Hub's resolve endpoint for one config.json."""

    def __init__(self, body: bytes, size: int | None = None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _headers(self) -> None:
                hub.requests.append((self.command, self.path))
                self.send_response(200 if "/resolve/" in self.path else 404)
                self.send_header("ETag", '"e1"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(size if size is not None else len(body)))
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 - the name http.server calls
                self._headers()

            def do_GET(self) -> None:  # noqa: N802
                self._headers()
                if "/resolve/" in self.path:
                    self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_reachable_hub_gives_the_config_which_is_then_cached(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import huggingface_hub  # noqa: F401 (installed with transformers)

    config, published = CASES["EleutherAI/pythia-160m"]
    hub = FakeHub(json.dumps(config).encode())
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        shape = model_shape("EleutherAI/pythia-160m", None, hub=True)
    finally:
        hub.close()
    assert shape.params == published and shape.source.startswith("Hugging Face Hub EleutherAI/pythia-160m")
    assert ("GET", "/EleutherAI/pythia-160m/resolve/main/config.json") in hub.requests
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the next plan, offline, reads what was cached
    assert model_shape("EleutherAI/pythia-160m", None).source.startswith("Hugging Face cache ")


def test_a_huge_config_on_the_hub_is_refused_before_it_is_downloaded(hub_env: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub  # noqa: F401 (installed with transformers)

    from orchestrator.plan.model_config import ModelConfigError

    hub = FakeHub(b"{}", size=10 << 30)
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ModelConfigError, match="over the"):
            model_shape("org/huge", None, hub=True)
    finally:
        hub.close()
    assert not any(method == "GET" and "/resolve/" in path for method, path in hub.requests)


def test_the_executors_never_ask_the_hub(hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.plan import model_config

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(model_config, "from_hub", lambda *_a, **_k: pytest.fail("asked the Hub"))
    assert "guessed" in model_shape(LLAMA_ID, 6.7e9).method  # hub=False: the cache only


# A config.json read is bounded, and its numbers are checked before any formula reads them.
def test_a_huge_config_file_or_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    import os

    from orchestrator.plan.model_config import ModelConfigError

    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "config.json", "wb") as f:
        f.truncate(10 << 30)  # sparse 10 GiB
    with pytest.raises(ModelConfigError, match="over the"):
        model_shape(str(huge), None)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")
    with pytest.raises(ModelConfigError, match="not a regular file"):
        model_shape(str(fifo), None)  # would block forever if opened for a plain read


@pytest.mark.parametrize(("text", "message"), [
    ('{"model_type": "llama", "hidden_size": NaN}', "not valid JSON"),
    ('{"model_type": "llama", "hidden_size": Infinity}', "not valid JSON"),
    ('{"model_type": "gpt2", "n_embd": 1e30, "n_layer": 2, "n_head": 2, "vocab_size": 10}', "n_embd"),
    ('{"model_type": "gpt2", "n_embd": 64, "n_layer": -2, "n_head": 2, "vocab_size": 10}', "n_layer"),
    ('{"model_type": "gpt2", "n_embd": 64, "n_layer": true, "n_head": 2, "vocab_size": 10}', "n_layer"),
    ('{"model_type": "gpt2", "n_embd": "64", "n_layer": 2, "n_head": 2, "vocab_size": 10}', "n_embd"),
    ('{"model_type": "bert", "num_hidden_layers": 2}', "missing or unusable field hidden_size"),
    ("[" * 200_000, "not valid JSON"),
    ('["not", "an", "object"]', "not a JSON object"),
])
def test_absurd_configs_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    from orchestrator.plan.model_config import ModelConfigError

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelConfigError, match=message):
        model_shape(str(tmp_path), 7e9)  # even with a count to fall back on: a broken config is not ignored
