"""The `baseline:` section: the dense variant every other is compared with, and dense models built to
the size of each MoE variant, so that "MoE beats dense" is a comparison of equal models.

    baseline: {variant: mlp, match: [active, total]}

`match` adds to every job, for each MoE variant, an mlp variant per kind whose hidden width gives
the parameter count nearest to the MoE variant's active parameters (those that predict one sample
under its inference routing) or its total parameters, at that job's grid point: mlp_active_<variant>
and mlp_total_<variant>. Counts come from the parameters and the dataset's dimensions, without
building a model. The matched MLPs take the layers and dropout of the named baseline when it is an
mlp, else the mlp defaults. When both kinds give the same width (soft routing runs every expert),
one MLP, named for the first kind, serves both comparisons.

On text (language modelling) the matched dense models are transformers instead: the MoE variant's
d_model, layers and heads, with the d_ff whose count is nearest (transformer_active_<variant>, ...).

Without `match` nothing is added and job keys are those of an experiment without the section.
"""

from __future__ import annotations

from moelab.data import dataset_dimensions, get_dataset_spec
from moelab.models import get_model_spec, model_params
from moelab.models.params import MLPParams, TransformerParams
from moelab.schema import Issue, did_you_mean

MATCH_KINDS = ("active", "total")


def check_match_kinds(value: list) -> str | None:
    unknown = [kind for kind in value if kind not in MATCH_KINDS]
    if unknown:
        return f"must list kinds out of {', '.join(MATCH_KINDS)}, got {unknown[0]!r}{did_you_mean(unknown[0], MATCH_KINDS)}"
    if len(set(value)) != len(value):
        return f"lists a kind twice: {value!r}"
    return None


def matched_name(kind: str, variant: str, data: dict) -> str:
    dense = "transformer" if get_dataset_spec(data["name"]).tokens else "mlp"
    return f"{dense}_{kind}_{variant}"


def check_baseline(doc: dict) -> list[Issue]:
    """The named baseline exists and is dense; matching has MoE variants to match and names that are free."""
    baseline, variants = doc["baseline"], doc["variants"]
    names = [v["name"] for v in variants]
    issues = []
    name = baseline["variant"]
    if name is not None and name not in names:
        issues.append(Issue("baseline.variant", f"no variant named {name!r}{did_you_mean(name, names)}; "
                                                f"variants: {', '.join(names)}"))
    elif name is not None:
        model = variants[names.index(name)]["model"]
        if get_model_spec(model).has_experts:
            issues.append(Issue("baseline.variant", f"variant {name!r} is an MoE model ({model}); the baseline is a "
                                                    "dense model: a variant of model mlp, cnn or transformer"))
    moe = [v["name"] for v in variants if get_model_spec(v["model"]).has_experts]
    match = baseline["match"] or []
    if match and not moe:
        issues.append(Issue("baseline.match", "there is no MoE variant to build matched dense models for"))
    for variant in moe:
        for kind in match:
            if matched_name(kind, variant, doc["data"]) in names:
                issues.append(Issue(f"variants.{matched_name(kind, variant, doc['data'])}",
                                    f"this name is taken by the dense model matched to the {kind} parameters of "
                                    f"{variant!r} (baseline.match); rename the variant"))
    return issues


def add_matched_variants(config: dict, baseline: dict | None) -> dict[str, dict[str, str]]:
    """Append the matched MLPs to a job's config (after its grid values are applied); returns, per MoE
    variant, the matched variant of each kind: {"moe": {"active": "mlp_active_moe", ...}}."""
    if not baseline or not baseline["match"]:
        return {}
    d_in, d_out = dataset_dimensions(config["data"])
    dataset = get_dataset_spec(config["data"]["name"])
    input_shape = dataset.input_shape
    named = next((v for v in config["variants"] if v["name"] == baseline["variant"]), None)
    source = model_params(named) if named is not None and named["model"] == "mlp" else vars(MLPParams())
    template = {"layers": source["layers"], "dropout": source["dropout"]}
    matched: dict[str, dict[str, str]] = {}
    added = []
    for variant in config["variants"]:
        spec = get_model_spec(variant["model"])
        params = model_params(variant)
        if not spec.has_experts or (input_shape is None and spec.needs_images(params)) or dataset.tokens != spec.needs_tokens:
            continue  # dense, or a model the data cannot feed (check_jobs says so)
        counts = spec.parameter_counts(d_in, d_out, params, input_shape)
        widths: dict[int, str] = {}  # hidden width -> the matched variant that has it
        for kind in baseline["match"]:
            if dataset.tokens:  # a dense transformer of the same shape, its MLP width fitted
                shape = {key: params.get(key, getattr(TransformerParams, key)) for key in ("d_model", "layers", "heads", "dropout")}
                width = TransformerParams(**shape).d_ff_for(getattr(counts, kind), d_in, d_out)
                dense = {"model": "transformer", "d_ff": width, **shape}
            else:
                width = MLPParams.hidden_for(getattr(counts, kind), d_in, d_out, template["layers"])
                dense = {"model": "mlp", "hidden": width, **template}
            if width not in widths:
                widths[width] = matched_name(kind, variant["name"], config["data"])
                added.append({"name": widths[width], **dense})
            matched.setdefault(variant["name"], {})[kind] = widths[width]
    config["variants"] = config["variants"] + added
    return matched
