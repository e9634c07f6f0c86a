"""The words of generated tables and figures in each page's language: one table, English to Chinese.

``layerdrop report`` draws a Chinese page's (``*.zh-CN.md``) headers, row names, titles and axes
from :data:`ZH`, so a student of the Chinese course reads no English outside names of commands, code
and papers. The Chinese terms are the ones the zh pages and their glossary use (准确率 for accuracy,
精度 only for numeric precision, 隔层 for every-other). A string missing from the table is an error,
not English slipping through. Templates (``"at {depth}"``) are translated first, then filled.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LANGUAGES", "ZH", "Language", "language_of", "say"]

Language = Literal["en", "zh"]
LANGUAGES: tuple[Language, ...] = ("en", "zh")

ZH: dict[str, str] = {
    # metrics
    "accuracy": "准确率",
    "perplexity": "困惑度",
    "f1": "F1",
    "exact_match": "精确匹配",
    "{metric} (%)": "{metric}（%）",
    # layerdrop compare: methods, as docs/comparison.zh-CN.md names them
    "plain fine-tune (full depth)": "普通微调（完整深度）",
    "LayerDrop fine-tune (full depth)": "LayerDrop 微调（完整深度）",
    "one elastic run (full depth)": "一次弹性训练（完整深度）",
    "plain, cut": "普通微调后剪枝",
    "LayerDrop, cut": "LayerDrop 后剪枝",
    "LayerDrop, cut and healed": "LayerDrop 剪枝后修复",
    "fixed depth (cut, then fine-tuned)": "固定深度（先剪枝再微调）",
    "DistilBERT-style (cut, then distilled)": "DistilBERT 式蒸馏（先剪枝再蒸馏）",
    "top layers dropped, fine-tuned": "去掉顶层再微调",
    "one elastic run": "一次弹性训练",
    "plain training (full depth)": "普通训练（完整深度）",
    "LayerDrop training (full depth)": "LayerDrop 训练（完整深度）",
    "plain training, cut": "普通训练后剪枝",
    "fixed depth (from scratch)": "固定深度（从零训练）",
    "plain": "普通训练",
    "layerdrop": "LayerDrop",
    "elastic": "弹性训练",
    # layerdrop compare: columns and sentences
    "method": "方法",
    "depth": "深度",
    "layers kept": "保留的层",
    "test {metric}": "测试集{metric}",
    "seeds": "各种子分数",
    "parameters": "参数量",
    "ms per batch": "每批延迟（毫秒）",
    "× full": "相对延迟（完整 = 1）",
    "training (min)": "训练时间（分钟）",
    "Pareto": "帕累托最优",
    "(cut)": "（仅剪枝）",
    "training runs": "训练次数",
    "training minutes": "总训练时间（分钟）",
    "at {depth}": "{depth} 层",
    "{name} {minutes} min": "{name} {minutes} 分钟",
    ", ": "、",  # between the items of a list in a sentence
    "What serving every depth of the table costs each method (full-depth runs: {minutes}):":
        "各方法覆盖表中全部深度所需的训练（完整深度模型的训练时间：{minutes}）：",
    "{model} on {data}": "{model}，{data}",
    # layerdrop sweep
    "strategy": "策略",
    "precision": "数值精度",
    "kept": "保留的层",
    "ms / batch": "每批延迟（毫秒）",
    # experiments/levers.py
    "run": "运行名",
    "{metric} at {depth}": "{depth} 层{metric}",
    "s / step": "每步耗时（秒）",
    "last loss": "最终训练损失",
    "highest loss": "最高训练损失",
    # experiments/lecture_generation.py
    "model": "模型",
    "greedy tokens/s": "贪心：词元/秒",
    "greedy distinct-2": "贪心：不同二元组占比",
    "greedy repeated 4-grams": "贪心：重复四元组占比",
    "sampled tokens/s": "采样：词元/秒",
    "sampled distinct-2": "采样：不同二元组占比",
    "sampled repeated 4-grams": "采样：重复四元组占比",
    "Self-speculative decoding at full depth (greedy):": "完整深度上的自投机解码（贪心解码）：",
    "draft depth": "草稿层数",
    "acceptance": "接受率",
    "tokens/s": "词元/秒",
    "speed-up": "加速比",
    # per-layer scores
    "layer {index}": "第 {index} 层",
    "per-layer scores": "各层得分",
    # figures
    "{metric} against {against}: {title}": "{metric}与{against}：{title}",
    "{metric} against {against}": "{metric}与{against}",
    "latency": "延迟",
    "training": "训练时间",
    "keep-masks": "保留掩码",
    "latency (ms per batch)": "延迟（毫秒/批）",
    "Pareto front, all": "全部点的帕累托前沿",
    "training minutes (with the full-depth run it needs)": "训练分钟数（含所需的完整深度训练）",
    "optimizer step": "训练步数",
    "training loss": "训练损失",
    "layer": "层",
    "importance (relative to the largest)": "重要性（相对最大值）",
    "training forward": "第几次训练前向传播",
    "layers run": "运行的层数",
    "forwards": "前向次数",
    "ran (black)": "运行（黑色）",
    "share of sublayers run": "运行的子层占比",
    "share of heads kept": "保留的注意力头占比",
    "{title}: {unit}": "{title}：{unit}",
    "{forwards} forwards, mean {mean}": "{forwards} 次前向，平均 {mean} 层",
    "input": "输入",
    "output": "输出",
    "training step {step}": "训练第 {step} 步",
    "inference: {depth} layers kept": "推理：保留 {depth} 层",
    "white, dashed: skipped (never called; red: its input passes on unchanged)":
        "白色虚线框：被跳过的层（根本不被调用；红色箭头：它的输入原样传给下一层）",
}
"""English -> Chinese for every word :mod:`layerdrop.evaluation.report` and ``layerdrop report`` generate."""

_TABLES: dict[Language, dict[str, str]] = {"zh": ZH}


def say(text: str, language: Language = "en", /, **fields: object) -> str:
    """``text`` (a string or a template with ``{fields}``) in ``language``, filled with ``fields``.

    >>> say("at {depth}", "zh", depth=3), say("at {depth}", depth=3)
    ('3 层', 'at 3')
    >>> say("no such words", "zh")
    Traceback (most recent call last):
    ...
    KeyError: "no Chinese for 'no such words': add it to layerdrop.evaluation.words.ZH"
    """
    if language != "en":
        table = _TABLES[language]
        if text not in table:
            raise KeyError(f"no Chinese for {text!r}: add it to layerdrop.evaluation.words.ZH")
        text = table[text]
    return text.format(**fields) if fields else text


def language_of(page: str) -> Language:
    """The language a page is written in, from its name: ``*.zh-CN.md`` is Chinese, anything else English.

    >>> language_of("docs/lecture.zh-CN.md"), language_of("docs/lecture.md")
    ('zh', 'en')
    """
    return "zh" if page.endswith(".zh-CN.md") else "en"
