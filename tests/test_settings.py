import pytest
import yaml

from segvol.settings import schema, stage_settings
from tests.conftest import REPO


def test_defaults_fill_missing_keys():
    settings = stage_settings("finetune", {"steps": 7})
    assert settings["steps"] == 7
    assert settings["lr"] == schema()["properties"]["finetune"]["properties"]["lr"]["default"]


def test_json_string_is_accepted():
    assert stage_settings("pretrain", '{"batch_size": 3}')["batch_size"] == 3


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="stpes"):
        stage_settings("finetune", {"stpes": 3})


def test_workflow_schema_is_the_package_schema():
    linked = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert yaml.safe_load(linked.read_text(encoding="utf-8")) == schema()


@pytest.mark.parametrize("config", ["config.yaml", "paper.yaml", "test.yaml"])
def test_every_config_validates(config):
    import jsonschema

    data = yaml.safe_load((REPO / "config" / config).read_text(encoding="utf-8"))
    jsonschema.validate(data, schema())
