"""Bad manifests and the exact messages users see for them."""

from __future__ import annotations

import textwrap

import pytest

from xfd import Manifest, ManifestError
from xfd.errors import XfdError

STORE = '[stores.models]\nurl = "s3://bucket/llama"\n'


def artifact(body: str) -> str:
    return STORE + "[[artifacts]]\n" + textwrap.dedent(body)


def artifacts(*bodies: tuple[str, ...]) -> str:
    """Artifacts of the store ``models``, one tuple of lines each."""
    return STORE + "".join(
        '[[artifacts]]\nstore = "models"\n' + "".join(f"{line}\n" for line in body) for body in bodies
    )


OWN_TREE = "an unpack directory belongs to its archive alone (unpacking replaces it whole)"


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
        [
            "artifacts[0].key: must be an object key such as dir/file.bin, without leading or trailing '/' "
            "(got 'dir/'); for every object under a prefix use prefix = ..."
        ],
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
        [
            "stores.m.url: must be a URL starting with one of s3://, gs://, az://, https://, http://, file://, "
            "memory:// (got 'ftp://host/x')"
        ],
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
        [
            'settings.chunk_size: must be "auto" or a size such as 64MiB, 1GiB, 500MB or a number of bytes '
            "(got '64 parsecs')"
        ],
        id="chunk-size-unit",
    ),
    pytest.param(
        '[settings]\nchunk_size = "1KiB"\n',
        ['settings.chunk_size: must be between 1MiB and 4GiB, or "auto" (got 1024 bytes)'],
        id="chunk-size-range",
    ),
    pytest.param(
        "[settings]\nnode_parallelism = 0\n",
        ["settings.node_parallelism: must be between 1 and 1024 (got 0)"],
        id="parallelism-range",
    ),
    pytest.param(
        '[settings]\nchunksize = "1MiB"\n',
        ["settings.chunksize: unknown key; did you mean 'chunk_size'?"],
        id="settings-typo",
    ),
    pytest.param(
        "artifact = []\n",
        ["artifact: unknown key; did you mean 'artifacts'? (top-level keys: settings, stores, artifacts)"],
        id="top-level-typo",
    ),
    pytest.param(
        STORE + '[[artifacts]]\nstore = "models"\nkey = "a"\nto = "/x"\nname = "n"\n'
        '[[artifacts]]\nstore = "models"\nkey = "b"\nto = "/x"\nname = "n"\n',
        [
            "artifacts[1].name: 'n' is already the name of artifacts[0]",
            "artifacts[1].to: /x is also the destination of artifacts[0], a different object; choose a different to",
        ],
        id="duplicates",
    ),
    # --- destinations are normalized, then outputs of two artifacts must not overlap ---
    pytest.param(
        artifacts(
            ('key = "a"', 'to = "/models/model.bin"'),
            ('key = "b"', 'to = "/models//model.bin"'),
            ('key = "c"', 'to = "/models/./model.bin"'),
        ),
        [
            "artifacts[1].to: /models/model.bin is also the destination of artifacts[0], a different object; "
            "choose a different to",
            "artifacts[2].to: /models/model.bin is also the destination of artifacts[0], a different object; "
            "choose a different to",
        ],
        id="one-path-spelled-three-ways",
    ),
    pytest.param(
        artifacts(
            ('key = "a"', 'to = "/d/a"'), ('key = "a"', 'to = "/d//a"', f'sha256 = "{"0" * 64}"', "cache = false")
        ),
        [
            "artifacts[1].to: /d/a is also the destination of artifacts[0], the same object with another sha256 and "
            "cache; make them agree or choose a different to"
        ],
        id="same-object-other-options",
    ),
    pytest.param(
        artifacts(
            ('key = "a.tar"', 'to = "/d/a.tar"', 'unpack = { to = "/x" }'),
            ('key = "b.tar"', 'to = "/d/b.tar"', 'unpack = { to = "/x/./" }'),
        ),
        [
            f"artifacts[1].unpack.to: /x is also the unpack directory of artifacts[0]: {OWN_TREE}; "
            "choose a different unpack.to"
        ],
        id="two-archives-one-tree",
    ),
    pytest.param(
        artifacts(
            ('key = "a.tgz"', 'to = "/d/a.tgz"', 'unpack = { to = "/x/y" }'),
            ('key = "b.tgz"', 'to = "/d/b.tgz"', 'unpack = { to = "/x" }'),
        ),
        [
            f"artifacts[1].unpack.to: /x contains /x/y, the unpack directory of artifacts[0]: {OWN_TREE}; "
            "choose a different unpack.to"
        ],
        id="tree-around-tree",
    ),
    pytest.param(
        artifacts(('key = "a.zip"', 'to = "/data/a.zip"', "unpack = {}"), ('key = "f"', 'to = "/data/a//f.bin"')),
        [
            f"artifacts[1].to: /data/a/f.bin lies inside /data/a, the unpack directory of artifacts[0]: {OWN_TREE}; "
            "choose a different to"
        ],
        id="file-in-a-derived-tree",
    ),
    pytest.param(
        artifacts(('key = "f"', 'to = "/x/sub/f"'), ('key = "a.tgz"', 'to = "/d/a.tgz"', 'unpack = { to = "/x" }')),
        [
            f"artifacts[1].unpack.to: /x contains /x/sub/f, the destination of artifacts[0]: {OWN_TREE}; "
            "choose a different unpack.to"
        ],
        id="tree-around-file",
    ),
    pytest.param(
        artifacts(
            ('key = "a.tgz"', 'to = "/d/a.tgz"', 'unpack = { to = "/x/in" }'),
            ('key = "b.tgz"', 'to = "/x/b.tgz"'),
            ('prefix = "p"', 'to = "/x/in/"'),
            ('prefix = "q"', 'to = "/x/in/deep"'),
            ('prefix = "r"', 'to = "/x"'),
        ),
        [
            f"artifacts[2].to: /x/in is also the unpack directory of artifacts[0]: {OWN_TREE}; choose a different to",
            f"artifacts[3].to: /x/in/deep lies inside /x/in, the unpack directory of artifacts[0]: {OWN_TREE}; "
            "choose a different to",
            f"artifacts[4].to: /x contains /x/in, the unpack directory of artifacts[0]: {OWN_TREE}; choose a different to",
        ],
        id="tree-and-prefix-directories",
    ),
    pytest.param(
        artifacts(
            ('key = "f"', 'to = "/x"'),
            ('key = "a.tgz"', 'to = "/d/a.tgz"', 'unpack = { to = "/x/y" }'),
            ('prefix = "p"', 'to = "/x"'),
            ('key = "g"', 'to = "/x/./g"'),
        ),
        [
            "artifacts[1].unpack.to: /x/y lies inside /x, the destination of artifacts[0]: a path cannot be both a file "
            "and a directory; choose a different unpack.to",
            "artifacts[2].to: /x is also the destination of artifacts[0]: a path cannot be both a file and a directory; "
            "choose a different to",
            f"artifacts[2].to: /x contains /x/y, the unpack directory of artifacts[1]: {OWN_TREE}; choose a different to",
            "artifacts[3].to: /x/g lies inside /x, the destination of artifacts[0]: a path cannot be both a file and a "
            "directory; choose a different to",
        ],
        id="file-used-as-directory",
    ),
    pytest.param(
        artifacts(('key = "a.tgz"', 'to = "/d/a.tgz"', 'unpack = { to = "/d//a.tgz/in" }')),
        [
            "artifacts[0].unpack.to: must not lie inside the archive itself (/d/a.tgz): a path cannot be both a file "
            "and a directory"
        ],
        id="tree-inside-its-archive",
    ),
    # --- unpack limits and the disk reserve ---
    pytest.param(
        artifacts(
            ('key = "a.tgz"', 'to = "/a.tgz"', 'unpack = { max_size = "0", max_ratio = -1 }'),
            ('key = "b.tgz"', 'to = "/b.tgz"', 'unpack = { max_size = "6 parsecs", max_ratio = "lots" }'),
            ('key = "c.tgz"', 'to = "/c.tgz"', "unpack = { max_ratio = inf }"),
            ('key = "d.tgz"', 'to = "/d.tgz"', "unpack = { max_ratio = nan, max_size = -1 }"),
        ),
        [
            "artifacts[0].unpack.max_size: must be a size above 0 bytes, such as 64GiB (got 0 bytes)",
            "artifacts[0].unpack.max_ratio: must be a finite number above 0, such as 200 (got -1.0)",
            "artifacts[1].unpack.max_size: must be a size such as 64MiB, 1GiB, 500MB or a number of bytes "
            "(got '6 parsecs')",
            "artifacts[1].unpack.max_ratio: must be a number (got 'lots')",
            "artifacts[2].unpack.max_ratio: must be a finite number above 0, such as 200 (got inf)",
            "artifacts[3].unpack.max_size: must be a size above 0 bytes, such as 64GiB (got -1 bytes)",
            "artifacts[3].unpack.max_ratio: must be a finite number above 0, such as 200 (got nan)",
        ],
        id="unpack-limits",
    ),
    pytest.param(
        '[settings]\ndisk_reserve = "1 GB of space"\n',
        ["settings.disk_reserve: must be a size such as 64MiB, 1GiB, 500MB or a number of bytes (got '1 GB of space')"],
        id="disk-reserve-unit",
    ),
    pytest.param(
        "[settings]\ndisk_reserve = -1\n",
        ["settings.disk_reserve: must be a size of 0 bytes or more, such as 1GiB (got -1 bytes)"],
        id="disk-reserve-negative",
    ),
    # --- one value of the wrong type in [settings] hides no other problem there ---
    pytest.param(
        '[settings]\nnode_parallelism = "8"\nupload_slots = 0\norigin_parallelism = "many"\n'
        'origin_chunk_streams = 40\ndisk_reserve = true\nchunk_size = "1KiB"\nchunksize = 1\n',
        [
            "settings.node_parallelism: must be an integer (got '8')",
            "settings.upload_slots: must be between 1 and 1024 (got 0)",
            "settings.origin_parallelism: must be an integer (got 'many')",
            "settings.disk_reserve: must be a size such as 64MiB or a number of bytes, not a boolean",
            'settings.chunk_size: must be between 1MiB and 4GiB, or "auto" (got 1024 bytes)',
            "settings.chunksize: unknown key; did you mean 'chunk_size'?",
        ],
        id="every-settings-problem",
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
        Manifest.loads("[settings]\nnode_parallelism = 0\n", "artifacts.toml")
    assert str(info.value) == "artifacts.toml: settings.node_parallelism: must be between 1 and 1024 (got 0)"


def test_toml_syntax_errors_name_file_line_and_column():
    with pytest.raises(ManifestError) as info:
        Manifest.loads('[stores.models\nurl = "s3://b"\n', "artifacts.toml")
    assert str(info.value).startswith("artifacts.toml: not valid TOML: ")
    assert "line 1" in str(info.value)


@pytest.mark.parametrize(
    ("data", "offset", "byte"),
    [
        (b"\x1f\x8b\x08\x00\x00\x00", 1, 0x8B),  # a gzip file
        ('[stores.m]\nurl = "s3://b"  # caf\u00e9\n'.encode("latin-1"), 32, 0xE9),  # Latin-1 text
    ],
)
def test_a_file_that_is_not_utf8_text_is_a_manifest_error(tmp_path, data, offset, byte):
    path = tmp_path / "artifacts.toml"
    path.write_bytes(data)
    with pytest.raises(ManifestError) as info:
        Manifest.load(path)
    assert str(info.value) == (
        f"{path}: not UTF-8 TOML text (byte 0x{byte:02x} at offset {offset} is not UTF-8); "
        "a manifest is a TOML text file, saved as UTF-8"
    )


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
