"""`clara_integrations.distributed` and `clara compress`: Ray Data on a local 2-CPU cluster
with the tiny fixture model, resuming by id, refusing a mismatched store, the CLI."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch

pytest.importorskip("ray.data")
# Ray Data's own deprecation notices (its DataContext reading its deprecated fields).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

import ray  # noqa: E402 - after the skip

from clara_integrations.cli import build_parser, main  # noqa: E402
from clara_integrations.distributed import compress_corpus, read_corpus, text_id  # noqa: E402
from clara_integrations.store import MemoryStore, StoreMismatchError  # noqa: E402
from tests.conftest import FIXTURE, REPO_ROOT, TINY_BASE  # noqa: E402

TEXTS = [
    "Weldenia is a monotypic genus of flowering plant in the family Commelinaceae.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Python is a high-level, general-purpose programming language.",
    "Beorn is a character created by J. R. R. Tolkien.",
    "The Danube flows through ten countries, more than any other river in the world.",
    "Mount Kilimanjaro is a dormant volcano in Tanzania.",
    "A haiku has three lines of five, seven and five syllables.",
    "The Great Barrier Reef lies off the coast of Queensland.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Ada Lovelace wrote what is considered the first computer program.",
]


def _docs():
    """Strings (ids from the text) and dicts with ids and metadata of different keys."""
    return [
        text if i % 3 == 0 else {"id": f"doc-{i}", "text": text, "metadata": {"n": i, f"k{i}": 1}}
        for i, text in enumerate(TEXTS)
    ]


def _ids():
    return [text_id(t) if i % 3 == 0 else f"doc-{i}" for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_memories_equal_compress_documents_and_a_rerun_skips_them(
    e2e_model, ray_cluster, tmp_path
):
    store = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    store.persist(tmp_path / "store", show_progress=False)
    stats = compress_corpus(
        [*_docs(), TEXTS[0]], store, e2e_model, batch_size=3, num_workers=2, show_progress=False
    )
    assert (stats.documents, stats.compressed, stats.skipped, stats.duplicates) == (11, 10, 0, 1)
    expected = e2e_model.compress_documents(TEXTS).float()
    assert torch.allclose(store.get_memories(_ids()), expected, atol=1e-4, rtol=0)
    nodes = store.get_nodes(_ids())
    assert [n.text for n in nodes] == TEXTS
    assert nodes[0].metadata == {} and nodes[1].metadata == {"n": 1, "k1": 1}
    # The store lived in a directory: compress_corpus persisted it.
    assert len(MemoryStore.load(tmp_path / "store")) == 10

    again = compress_corpus(_docs(), store, e2e_model, num_workers=2, show_progress=False)
    assert (again.compressed, again.skipped) == (0, 10)  # resumed: nothing left to do
    assert len(store) == 10


def test_cli_ray_run_of_the_readme_command(ray_cluster, tmp_path):
    """The README's `--ray` command on the tiny model, into the cluster already running."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:4]))
    line = next(c for c in _readme_commands() if "--ray --workers" in c)  # a local cluster
    args = [
        a.replace("corpus.jsonl", str(corpus)).replace("./my_store", str(tmp_path / "s"))
        for a in shlex.split(line)[1:]
    ]
    model = ["--model", str(FIXTURE / "ckpt-e2e"), "--base-model", str(TINY_BASE)]
    assert main([*args, *model, "--workers", "1", "--no-progress"]) == 0  # one CPU each
    assert len(MemoryStore.load(tmp_path / "s")) == 4


def test_in_process_resumes_where_it_stopped(e2e_model):
    store = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    first = compress_corpus(_docs()[:4], store, e2e_model, use_ray=False, show_progress=False)
    rest = compress_corpus(_docs(), store, e2e_model, use_ray=False, show_progress=False)
    assert (first.compressed, rest.compressed, rest.skipped) == (4, 6, 4)
    expected = e2e_model.compress_documents(TEXTS).float()
    assert torch.allclose(store.get_memories(_ids()), expected, atol=1e-4, rtol=0)


def test_a_mismatched_store_is_refused_before_compressing(e2e_model):
    other = MemoryStore(e2e_model.n_mem, e2e_model.hidden_size, model_identity="clara-other")
    with pytest.raises(StoreMismatchError, match="clara-other"):
        compress_corpus(TEXTS, other, e2e_model, show_progress=False)  # Ray never starts
    wrong_shape = MemoryStore(e2e_model.n_mem + 1, e2e_model.hidden_size)
    with pytest.raises(StoreMismatchError):
        compress_corpus(TEXTS, wrong_shape, e2e_model, use_ray=False, show_progress=False)
    assert len(other) == len(wrong_shape) == 0


def test_cli_compresses_a_jsonl_in_process_and_resumes(e2e_model, tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": "p1", "text": TEXTS[0], "metadata": {"src": "a"}})]
    lines += [json.dumps({"text": t}) for t in TEXTS[1:4]] + ["not json"]
    corpus.write_text("\n".join(lines) + "\n")
    store_dir = tmp_path / "store"
    args = ["compress", "--docs", str(corpus), "--store", str(store_dir), "--no-progress"]
    args += ["--model", str(FIXTURE / "ckpt-e2e"), "--base-model", str(TINY_BASE)]
    args += ["--dtype", "float32", "--store-dtype", "float32", "--batch-size", "2"]
    assert main(args) == 0
    assert "4 compressed, 0 already in the store" in capsys.readouterr().out
    store = MemoryStore.load(store_dir)
    ids = ["p1"] + [text_id(t) for t in TEXTS[1:4]]
    expected = e2e_model.compress_documents(TEXTS[:4]).float()
    assert torch.allclose(store.get_memories(ids), expected, atol=1e-4, rtol=0)
    assert store.get_nodes(["p1"])[0].metadata == {"src": "a"}
    store.close()
    assert main(args) == 0
    assert "0 compressed, 4 already in the store" in capsys.readouterr().out
    # Another compressor's store is refused with a message, not a traceback.
    other = MemoryStore(e2e_model.n_mem, e2e_model.hidden_size, model_identity="clara-other")
    other.persist(tmp_path / "other", show_progress=False)
    other.close()
    bad = [a if a != str(store_dir) else str(tmp_path / "other") for a in args]
    assert main(bad) == 2
    assert "clara-other" in capsys.readouterr().err


def test_read_corpus_folder_ids_are_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("First document.\r\nSecond line.")
    (tmp_path / "sub" / "b.md").write_text("# Title\n\nA markdown document.")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    docs = list(read_corpus(tmp_path))
    assert [d["id"] for d in docs] == ["a.txt", "sub/b.md"]
    assert docs[0]["text"] == "First document.\nSecond line."
    assert docs[1]["metadata"] == {"source": "sub/b.md"}
    with pytest.raises(FileNotFoundError):
        list(read_corpus(tmp_path / "missing"))


def _readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out") :]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if "clara compress" in line]


def test_readme_compress_commands_parse():
    commands = _readme_commands()
    assert any("--ray" in c for c in commands) and any("--ray" not in c for c in commands)
    for line in commands:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == "compress"


def test_a_store_in_a_directory_is_persisted_at_the_end_and_milvus_resumes(e2e_model, tmp_path):
    """Without intermediate persists (`persist_every=None`) the run is still persisted
    when it ends (closing an unpersisted change would lose it); `--persist-every 0` is
    refused; a Milvus store resumes by id."""
    store = MemoryStore.for_model(e2e_model, dtype=torch.float32)
    store.persist(tmp_path / "s", show_progress=False)
    compress_corpus(
        TEXTS[:3], store, e2e_model, use_ray=False, persist_every=None, show_progress=False
    )
    store.close()
    assert len(MemoryStore.load(tmp_path / "s")) == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["compress", "--docs", "d", "--store", "s", "--persist-every", "0"]
        )
    pytest.importorskip("milvus_lite")
    from clara_integrations.store import MilvusMemoryStore

    with MilvusMemoryStore.for_model(e2e_model, str(tmp_path / "m.db"), dtype=torch.float32) as m:
        first = compress_corpus(TEXTS[:4], m, e2e_model, use_ray=False, show_progress=False)
        again = compress_corpus(TEXTS, m, e2e_model, use_ray=False, show_progress=False)
        assert (first.compressed, again.compressed, again.skipped, len(m)) == (4, 6, 4, 10)
