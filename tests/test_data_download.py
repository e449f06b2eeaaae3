"""Downloads against a local HTTP server on 127.0.0.1: resume, checksums, safe extraction, the CLI."""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tarfile
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmtrain import cli
from mmtrain.data import download as dl
from mmtrain.data.coco import build_coco_captions
from mmtrain.data.mnist_imdb import build_mnist_imdb
from mmtrain.errors import DataError
from tests.data_helpers import coco_fixture, mnist_imdb_fixture


class RangeHandler(BaseHTTPRequestHandler):
    """Serves files from `folder`, honouring `Range: bytes=N-` as publishers' servers do."""

    def __init__(self, *args, folder: Path, requests: list, **kw):
        self.folder, self.requests = folder, requests
        super().__init__(*args, **kw)

    def do_GET(self):
        path = self.folder / self.path.lstrip("/")
        self.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, folder=folder, requests=requests))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, requests
    httpd.shutdown()
    httpd.server_close()


def mmtrain_in_process(monkeypatch, args: list[str]) -> None:
    """cli.main as the console script runs it; the env and argv it changes are restored after."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli.main(args)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_partial_download_resumes_with_a_range_request(server, tmp_path):
    url, folder, requests = server
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 400)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    dest.with_name("blob.bin.part").write_bytes((bytes(range(256)) * 400)[:30000])
    dl.fetch(f"{url}/blob.bin", dest, md5(folder / "blob.bin"), progress=False)
    assert requests == [("/blob.bin", "bytes=30000-")]
    assert dest.read_bytes() == (folder / "blob.bin").read_bytes()
    assert not dest.with_name("blob.bin.part").exists()


def test_checksum_mismatch_is_refused_and_the_file_removed(server, tmp_path):
    url, folder, _ = server
    (folder / "blob.bin").write_bytes(b"tampered" * 100)
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match=r"blob.bin from .* has MD5 .*expected 0+: the file was removed"):
        dl.fetch(f"{url}/blob.bin", dest, "0" * 32, progress=False)
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_tar_member_escaping_the_target_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="evil.tar.gz.*refusing to extract"):
        dl.extract(archive, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("member", ["../escaped.txt", "/abs/escaped.txt", "a/../../escaped.txt"])
def test_zip_member_escaping_the_target_is_refused(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(member, "evil")
    with pytest.raises(DataError, match="a path outside"):
        dl.extract(archive, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "target" / "fine.txt").exists()


def _serve(monkeypatch, folder: Path, files: list[tuple[str, str]]) -> None:
    """Record the served archives' MD5s in place of the publishers' (the URLs keep their names)."""
    real = dl.resources
    def fake(dataset, year=2017):
        by_name = {r.filename: r for r in real(dataset, year)}
        return [dl.Resource(by_name[name].url, md5(folder / name), to) for name, to in files]
    monkeypatch.setattr(dl, "resources", fake)


def test_download_mnist_imdb_from_a_mirror_gives_a_dataset_that_loads(server, tmp_path, monkeypatch):
    url, folder, _ = server
    src = mnist_imdb_fixture(tmp_path / "src", n_train=60, n_test=20, n_reviews=10)
    for f in (src / "MNIST/raw").iterdir():
        shutil.copy(f, folder / f.name)
    with tarfile.open(folder / "aclImdb_v1.tar.gz", "w:gz") as tar:
        tar.add(src / "aclImdb", arcname="aclImdb")
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    _serve(monkeypatch, folder, [(n, "MNIST/raw") for n in names] + [("aclImdb_v1.tar.gz", "")])
    root = tmp_path / "data"
    mmtrain_in_process(monkeypatch, ["data", "download", "mnist_imdb", "--root", str(root), "--mirror", url,
                                     "--no-progress"])
    bundle = build_mnist_imdb(root=str(root), tokenizer_options={"max_length": 16})
    assert len(bundle.test) == 20 and bundle.info.num_classes["label"] == 20
    # data.download=true with the mirror from the environment: a fresh root is fetched at build time.
    monkeypatch.setenv(dl.MIRROR_ENV, url)
    again = build_mnist_imdb(root=str(tmp_path / "fresh"), download=True, tokenizer_options={"max_length": 16})
    assert len(again.train) == len(bundle.train)


def test_download_coco_zips_from_a_mirror_gives_a_dataset_that_loads(server, tmp_path, monkeypatch):
    url, folder, _ = server
    src = coco_fixture(tmp_path / "src", n_train=8, n_val=4)
    for zip_name, members in (("annotations_trainval2017.zip", "annotations"), ("train2017.zip", "train2017"),
                              ("val2017.zip", "val2017")):
        with zipfile.ZipFile(folder / zip_name, "w") as zf:
            for f in sorted((src / members).iterdir()):
                zf.write(f, f"{members}/{f.name}")
    _serve(monkeypatch, folder, [("annotations_trainval2017.zip", ""), ("val2017.zip", ""), ("train2017.zip", "")])
    root = tmp_path / "data"
    mmtrain_in_process(monkeypatch, ["data", "download", "coco", "--root", str(root), "--mirror", url,
                                     "--no-progress", "--delete-archives"])
    bundle = build_coco_captions(root=str(root), image_size=16, n_val=2, tokenizer_options={"max_length": 8})
    assert len(bundle.test) == 4 * 5 and bundle.train[0]["image"].shape == (3, 16, 16)
    assert not list((root / "downloads").iterdir())


def test_download_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        mmtrain_in_process(monkeypatch, ["data", "download", "coco", "--year", "2015", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "COCO year 2015 is not available" in err


def test_http_error_names_the_url_and_keeps_a_partial_file_for_resuming(server, tmp_path):
    url, _, _ = server
    dest = tmp_path / "gone.bin"
    dest.with_name("gone.bin.part").write_bytes(b"partial")
    with pytest.raises(DataError, match=r"downloading .*/gone.bin failed: HTTP 404.*gone.bin.part is kept"):
        dl.fetch(f"{url}/gone.bin", dest, "0" * 32, progress=False)


def test_synth_refuses_a_folder_that_already_holds_files(tmp_path):
    from tests.data_helpers import run_mmtrain

    root = tmp_path / "data"
    (root / "aclImdb").mkdir(parents=True)
    (root / "IMDB Dataset.csv").write_text("review,sentiment\nreal,positive\n")
    out = run_mmtrain(["data", "synth", "mnist_imdb", "--out", str(root)], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"mmtrain: error: {root} is not empty: write the fake mnist_imdb set "
                                  f"to a new folder (or pass --force to write into this one)")
    assert (root / "IMDB Dataset.csv").read_text() == "review,sentiment\nreal,positive\n"
    assert not (root / "MNIST").exists()


def test_an_unreachable_network_says_so_and_how_to_go_on(tmp_path):
    # .invalid never resolves (RFC 2606): the error a machine without a network sees.
    with pytest.raises(DataError) as info:
        dl.fetch("http://mnist.invalid/train-images-idx3-ubyte.gz", tmp_path / "downloads" / "x.gz",
                 "0" * 32, progress=False)
    message = str(info.value)
    assert "the network is unreachable" in message and "--mirror URL" in message
    assert f"place x.gz in {tmp_path / 'downloads'} by hand" in message
