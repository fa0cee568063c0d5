"""What bench says of a checkpoint's RoPE settings, release by release, and the release facts it rests on
(read in the wheels of every release the patches list)."""

from __future__ import annotations

import zipfile

import pytest
from packaging.version import Version

from patcher.bench import rope
from patcher.catalog import load_catalog
from patcher.errors import UsageError
from releases import wheel

CODELLAMA = {"rope_theta": 1000000}
LLAMA3_SCALING = {
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
LLAMA31 = {"rope_theta": 500000.0, "rope_scaling": LLAMA3_SCALING}
LINEAR = {"rope_scaling": {"type": "linear", "factor": 2.0}}
IGNORED_THETA = (
    "--model-path m: config.json asks for rope_theta {theta}, which transformers {version} ignores (Llama reads "
    "rope_theta from transformers 4.33.0 on): the model runs with rotary base 10000 instead and answers worse than "
    "it was trained to"
)
IGNORED_SCALING = (
    "--model-path m: config.json asks for rope_scaling {scaling}, which transformers {version} ignores (Llama reads "
    "this rope_scaling from transformers {since} on): the model runs without RoPE scaling instead and answers worse "
    "than it was trained to"
)
REFUSED_SCALING = (
    "--model-path m: config.json asks for rope_scaling {scaling}, which transformers {version} refuses when it loads "
    'the model (4.31.0 to 4.42.4 take only {{"type": "linear" or "dynamic", "factor": a float above 1}}; Llama reads '
    "this rope_scaling from transformers 4.43.0 on)"
)
LLAMA3_JSON = (
    '{"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, '
    '"rope_type": "llama3"}'
)


@pytest.mark.parametrize("version", ["4.28.0", "4.31.0", "4.32.1"])
def test_a_rope_base_the_release_predates_is_named_with_the_release_that_reads_it(version):
    assert rope.checkpoint_warnings(CODELLAMA, version, "m") == [IGNORED_THETA.format(theta=1000000, version=version)]


def test_a_release_that_reads_rope_theta_says_nothing_of_it():
    assert rope.checkpoint_warnings(CODELLAMA, "4.33.0", "m") == []


@pytest.mark.parametrize("config", [{"rope_theta": 10000.0}, {"rope_theta": 10000}, {}])
def test_the_default_base_is_no_news_to_any_release(config):
    assert rope.checkpoint_warnings(config, "4.28.0", "m") == []


def test_a_release_without_rope_scaling_ignores_it_and_both_llama3_settings_are_named():
    assert rope.checkpoint_warnings(LLAMA31, "4.30.2", "m") == [
        IGNORED_THETA.format(theta=500000.0, version="4.30.2"),
        IGNORED_SCALING.format(scaling=LLAMA3_JSON, version="4.30.2", since="4.43.0"),
    ]
    assert rope.checkpoint_warnings(LINEAR, "4.28.0", "m") == [
        IGNORED_SCALING.format(scaling='{"type": "linear", "factor": 2.0}', version="4.28.0", since="4.31.0"),
    ]


@pytest.mark.parametrize("version", ["4.31.0", "4.36.2", "4.41.2"])
def test_the_releases_that_read_linear_and_dynamic_scaling_say_nothing_of_them(version):
    assert rope.checkpoint_warnings(LINEAR, version, "m") == []
    assert rope.checkpoint_warnings({"rope_scaling": {"type": "dynamic", "factor": 4.0}}, version, "m") == []


@pytest.mark.parametrize("version", ["4.31.0", "4.41.2"])
def test_a_rope_scaling_the_release_would_refuse_at_load_is_a_usage_error(version):
    with pytest.raises(UsageError) as refused:
        rope.checkpoint_warnings(LLAMA31, version, "m")
    assert str(refused.value) == REFUSED_SCALING.format(scaling=LLAMA3_JSON, version=version)
    assert refused.value.exit_code == 2


@pytest.mark.parametrize(
    "scaling",
    [
        {"type": "linear", "factor": 2},
        {"rope_type": "linear", "factor": 2.0},
        {"type": "linear", "factor": 1.0},
        {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4096},
    ],
)
def test_forms_only_later_releases_read_are_refused_as_4_31_refuses_them(scaling):
    with pytest.raises(UsageError, match="refuses when it loads the model"):
        rope.checkpoint_warnings({"rope_scaling": scaling}, "4.31.0", "m")


def test_releases_from_4_43_check_rope_scaling_themselves_and_an_unknown_version_is_not_judged():
    assert rope.checkpoint_warnings(LLAMA31, "4.43.0", "m") == []
    assert rope.checkpoint_warnings(LLAMA31, "unknown", "m") == []


def llama_sources(version: str) -> tuple[str, str]:
    with zipfile.ZipFile(wheel(version)) as archive:
        return tuple(
            archive.read(f"transformers/models/llama/{name}.py").decode("utf-8")
            for name in ("configuration_llama", "modeling_llama")
        )


@pytest.mark.slow  # downloads each release's wheel on first use
@pytest.mark.parametrize("version", load_catalog()["graph-mode"].releases)
def test_the_tables_match_what_each_release_reads(version):
    configuration, modeling = llama_sources(version)
    reads_theta = "base=self.rope_theta" in modeling
    reads_scaling = 'self.config.rope_scaling["type"]' in modeling
    strict = "len(self.rope_scaling) != 2" in configuration and 'not in ["linear", "dynamic"]' in configuration
    assert reads_theta == (Version(version) >= Version(rope.ROPE_THETA_SINCE))
    assert (rope.checkpoint_warnings(CODELLAMA, version, "m") == []) == reads_theta
    assert (rope.checkpoint_warnings(LINEAR, version, "m") == []) == reads_scaling
    assert strict == reads_scaling  # up to 4.41: every release that reads rope_scaling refuses llama3's
    if strict:
        with pytest.raises(UsageError):
            rope.checkpoint_warnings({"rope_scaling": LLAMA3_SCALING}, version, "m")
