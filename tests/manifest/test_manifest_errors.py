"""Bad manifests and the exact messages users see for them."""

from __future__ import annotations

import textwrap

import pytest

from xfd import Manifest, ManifestError
from xfd.errors import XfdError

STORE = '[stores.models]\nurl = "s3://bucket/llama"\n'


def artifact(body: str) -> str:
    return STORE + "[[artifacts]]\n" + textwrap.dedent(body)


CASES = [
    pytest.param(
        artifact('store = "models"\nkey = "a.rar"\nto = "/a.rar"\nunpack = { format = "rar", to = "/a" }\n'),
        ["artifacts[0].unpack.format: must be one of auto, tar, tar.gz, tgz, zip (got 'rar')"],
        id="unpack-format",
    ),
    pytest.param(
        artifact('store = "modles"\nkey = "a"\nto = "/a"\n'),
        ["artifacts[0].store: no store named 'modles'; did you mean 'models'? (stores: models)"],
        id="store-typo",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nto = "a/b"\n'),
        ["artifacts[0].to: must be an absolute path such as /data/file (got 'a/b')"],
        id="relative-destination",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nto = "/x/../../etc/passwd"\n'),
        ["artifacts[0].to: must not contain '..' segments or NUL bytes (got '/x/../../etc/passwd')"],
        id="dotdot-destination",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nto = "/a"\ndestination = "/b"\n'),
        ["artifacts[0].destination: unknown key (allowed: store, key, to, name, sha256, cache, unpack, nodes)"],
        id="unknown-artifact-key",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nto = "/a"\ncahce = false\n'),
        ["artifacts[0].cahce: unknown key; did you mean 'cache'?"],
        id="did-you-mean-key",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nprefix = "b"\nto = "/a"\n'),
        ['artifacts[0]: needs exactly one of key = "dir/file" (one object) or prefix = "dir/" (every object under it)'],
        id="key-and-prefix",
    ),
    pytest.param(
        artifact('store = "models"\nto = "/a"\n'),
        ['artifacts[0]: needs exactly one of key = "dir/file" (one object) or prefix = "dir/" (every object under it)'],
        id="neither-key-nor-prefix",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\n'),
        ["artifacts[0].to: required key missing"],
        id="missing-to",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nto = "/a"\ncache = "yes"\n'),
        ["artifacts[0].cache: must be true or false (got 'yes')"],
        id="wrong-type",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "a"\nto = "/a"\nsha256 = "abc"\n'),
        ["artifacts[0].sha256: must be 64 lower-case hexadecimal digits"],
        id="bad-sha256",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "weights.bin"\nto = "/w.bin"\nunpack = {}\n'),
        ["artifacts[0].unpack.to: required when the destination does not end in .tar, .tar.gz, .tgz or .zip"],
        id="unpack-needs-to",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "d.tar"\nto = "/data/d.tar"\nunpack = { to = "/data" }\n'),
        ["artifacts[0].unpack.to: must not contain the archive itself (/data/d.tar)"],
        id="unpack-over-archive",
    ),
    pytest.param(
        artifact('store = "models"\nkey = "dir/"\nto = "/a"\n'),
        ["artifacts[0].key: must be an object key such as dir/file.bin, without leading or trailing '/' "
         "(got 'dir/'); for every object under a prefix use prefix = ..."],
        id="key-looks-like-prefix",
    ),
    pytest.param(
        artifact('store = "models"\nprefix = "p"\nto = "/p"\ninclude = "*.json"\n'),
        ["artifacts[0].include: must be a list of strings (got '*.json')"],
        id="include-not-a-list",
    ),
    pytest.param(
        STORE + 'regoin = "us-east-1"\n',
        ["stores.models.regoin: unknown option; did you mean 'region'?"],
        id="store-option-typo",
    ),
    pytest.param(
        '[stores.m]\nurl = "file:///data"\nregion = "x"\n',
        ["stores.m.region: unknown option; file:// stores take no options"],
        id="option-on-local-store",
    ),
    pytest.param(
        '[stores.m]\nurl = "ftp://host/x"\n',
        ["stores.m.url: must be a URL starting with one of s3://, gs://, az://, https://, http://, file://, "
         "memory:// (got 'ftp://host/x')"],
        id="unknown-scheme",
    ),
    pytest.param(
        '[stores.m]\nurl = "s3:///prefix"\n',
        ["stores.m.url: must name a bucket, as in s3://bucket/optional/prefix (got 's3:///prefix')"],
        id="no-bucket",
    ),
    pytest.param(
        '[stores.m]\nregion = "x"\n',
        ['stores.m: needs url = "s3://bucket/prefix" (or gs://, az://, https://, file://, memory://)'],
        id="store-without-url",
    ),
    pytest.param(
        STORE + 'secret_access_key = "${AWS SECRET}"\n',
        ["stores.models.secret_access_key: a '$' must start ${NAME} or ${NAME:-default} (write $$ for a literal '$')"],
        id="bad-template",
    ),
    pytest.param(
        '[settings]\nchunk_size = "64 parsecs"\n',
        ['settings.chunk_size: must be "auto" or a size such as 64MiB, 1GiB, 500MB or a number of bytes '
         "(got '64 parsecs')"],
        id="chunk-size-unit",
    ),
    pytest.param(
        '[settings]\nchunk_size = "1KiB"\n',
        ['settings.chunk_size: must be between 1MiB and 4GiB, or "auto" (got 1024 bytes)'],
        id="chunk-size-range",
    ),
    pytest.param(
        '[settings]\nnode_parallelism = 0\n',
        ["settings.node_parallelism: must be between 1 and 1024 (got 0)"],
        id="parallelism-range",
    ),
    pytest.param(
        '[settings]\nchunksize = "1MiB"\n',
        ["settings.chunksize: unknown key; did you mean 'chunk_size'?"],
        id="settings-typo",
    ),
    pytest.param(
        'artifact = []\n',
        ["artifact: unknown key; did you mean 'artifacts'? (top-level keys: settings, stores, artifacts)"],
        id="top-level-typo",
    ),
    pytest.param(
        STORE + '[[artifacts]]\nstore = "models"\nkey = "a"\nto = "/x"\nname = "n"\n'
        '[[artifacts]]\nstore = "models"\nkey = "b"\nto = "/x"\nname = "n"\n',
        ["artifacts[1].name: 'n' is already the name of artifacts[0]",
         "artifacts[1].to: /x is also the destination of artifacts[0], a different object"],
        id="duplicates",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_bad_manifest_messages(text: str, expected: list[str]):
    with pytest.raises(ManifestError) as info:
        Manifest.loads(text, "artifacts.toml")
    assert [f"{path}: {message}" for path, message in info.value.problems] == expected
    assert isinstance(info.value, XfdError)


def test_every_problem_is_reported_at_once_in_file_order(tmp_path):
    path = tmp_path / "artifacts.toml"
    path.write_text(
        '[settings]\nchunk_size = "huge"\n'
        '[stores.models]\nurl = "s3://b"\nregoin = "x"\n'
        '[[artifacts]]\nstore = "nope"\nkey = "a"\nto = "rel"\n'
        '[[artifacts]]\nstore = "models"\nkey = "a.zip"\nto = "/a.zip"\nunpack = { format = "rar" }\n'
    )
    with pytest.raises(ManifestError) as info:
        Manifest.load(path)
    assert str(info.value) == (
        f"{path} has 5 problems:\n"
        '  settings.chunk_size: must be "auto" or a size such as 64MiB, 1GiB, 500MB or a number of bytes '
        "(got 'huge')\n"
        "  stores.models.regoin: unknown option; did you mean 'region'?\n"
        "  artifacts[0].store: no store named 'nope' (stores: models)\n"
        "  artifacts[0].to: must be an absolute path such as /data/file (got 'rel')\n"
        "  artifacts[1].unpack.format: must be one of auto, tar, tar.gz, tgz, zip (got 'rar')"
    )


def test_one_problem_is_one_line_naming_the_file():
    with pytest.raises(ManifestError) as info:
        Manifest.loads('[settings]\nnode_parallelism = 0\n', "artifacts.toml")
    assert str(info.value) == "artifacts.toml: settings.node_parallelism: must be between 1 and 1024 (got 0)"


def test_toml_syntax_errors_name_file_line_and_column():
    with pytest.raises(ManifestError) as info:
        Manifest.loads('[stores.models\nurl = "s3://b"\n', "artifacts.toml")
    assert str(info.value).startswith("artifacts.toml: not valid TOML: ")
    assert "line 1" in str(info.value)


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match=r"missing\.toml: cannot read the manifest: No such file or directory"):
        Manifest.load(tmp_path / "missing.toml")


def test_secrets_never_appear_in_errors_or_reprs():
    canary = "CANARY-SECRET-4f1c"
    text = STORE + f'secret_access_key = "{canary}"\nregoin = "{canary}"\n'
    with pytest.raises(ManifestError) as info:
        Manifest.loads(text, "artifacts.toml")
    assert canary not in str(info.value)
    manifest = Manifest.loads(STORE + f'secret_access_key = "{canary}"\n')
    assert canary not in repr(manifest)
    assert canary not in manifest._repr_html_()
    assert "'***'" in repr(manifest.stores["models"])
