import json

import pytest

from hubruntime.lua.manifest import ManifestError, load_plugin
from hubruntime.plugins import EXAMPLES


def write(tmp_path, manifest, scripts=None, raw=None):
    folder = tmp_path / "acme.x"
    (folder / "scripts").mkdir(parents=True)
    (folder / "config.json").write_text(raw if raw is not None else json.dumps(manifest))
    for name, src in (scripts or {"startup": "-- hi"}).items():
        (folder / "scripts" / f"{name}.lua").write_text(src)
    return folder


def test_example_plugins_load():
    for name in ("example.eventlog", "example.counters"):
        p = load_plugin(EXAMPLES / name)
        assert p.id == name and p.startup and p.scripts


def test_startup_forms(tmp_path):
    for form in ("scripts/startup", "startup", "HUB:acme.x/scripts/startup"):
        folder = write(tmp_path / form.replace("/", "_").replace(":", "_"),
                       {"id": "acme.x", "version": "1", "startup": form})
        assert load_plugin(folder).startup == "HUB:acme.x/scripts/startup"


@pytest.mark.parametrize("manifest, needle", [
    ({"version": "1"}, "field 'id'"),
    ({"id": "noprefix", "version": "1"}, "field 'id'"),
    ({"id": "acme.x"}, "field 'version'"),
    ({"id": "acme.x", "version": "1", "permissions": "cameras"}, "field 'permissions'"),
    ({"id": "acme.x", "version": "1", "startup": "scripts/missing"}, "field 'startup'"),
    ({"id": "acme.x", "version": "1", "teardown": "HUB:other.y/scripts/t"}, "field 'teardown'"),
    ({"id": "acme.x", "version": "1", "meta": []}, "field 'meta'"),
])
def test_bad_manifest_names_file_and_field(tmp_path, manifest, needle):
    folder = write(tmp_path, manifest)
    with pytest.raises(ManifestError) as info:
        load_plugin(folder)
    assert str(folder / "config.json") in str(info.value)
    assert needle in str(info.value)


def test_invalid_json_gives_line(tmp_path):
    folder = write(tmp_path, None, raw='{\n  "id": "acme.x",\n  "version": 1,,\n}')
    with pytest.raises(ManifestError, match=r"config.json:3:\d+: invalid JSON"):
        load_plugin(folder)


def test_unknown_fields_kept_unknown_permissions_warned(tmp_path):
    folder = write(tmp_path, {"id": "acme.x", "version": "1", "custom": {"a": 1},
                              "permissions": ["cameras", "core"]})
    p = load_plugin(folder)
    assert p.manifest["custom"] == {"a": 1}
    assert any("core" in w for w in p.warnings)
