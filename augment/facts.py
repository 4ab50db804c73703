"""The fact guard: what a variant must keep from its original.

The facts of a text are five multisets of normalised values, extracted the same way from the
original and from each variant (Chinese, English and mixed text alike):

* ``entity``: knowledge-graph entities (and user-dictionary words), counted under the entity's
  name, so an alias counts as its entity (``中央处理器`` and ``CPU`` are both ``CPU``).  Matched
  as literal surfaces (longest first; Latin surfaces at word boundaries), without a segmenter,
  so the count does not depend on how jieba cuts the neighbouring words;
* ``date``: ``2023年5月5日``, ``二〇二三年五月``, ``5月5日``, ``2023-05-05``, ``May 5, 2023``,
  ``5 May 2023``, ``May 2023`` ... as ``2023-05-05``, ``2023-05``, ``--05-05``, ``2023``;
* ``number``: a value with its unit when one follows (``500 mg``, ``38.5 °C``, ``50%``):
  Arabic and full-width digits, thousands separators, decimals, a sign, scale words (``1.2万``,
  ``3 million``), Chinese numerals (``三千五百`` = 3500, ``两万三`` = 23000, ``一点五`` = 1.5,
  ``二〇二三`` = 2023), English number words (``twenty-five``), percentages (``50%``,
  ``百分之五十``, ``50 percent``), per mille and fractions (``三分之一`` = ``1/3``);
* ``unit``: the units of those quantities, normalised (``mg`` = ``毫克`` = ``milligrams``,
  ``°C`` = ``℃`` = ``摄氏度``, ``kg`` = ``公斤`` = ``千克``);
* ``negation``: negation cues: ``不 没 没有 未 无 非 别 勿 否`` and ``not no never n't without``
  (plus ``cannot nor neither none nobody nothing nowhere``).  A cue character inside a word
  that does not negate (``无论 无锡 无线 非常 非洲 未来 特别 别人 是否 否则 不过 不仅 没收``),
  a double negative (``不得不``, ``无不``) or an entity surface is not a cue; ``No. 5`` is a number.

A variant keeps its facts when every multiset equals the original's (negations: the same
number of cues, whichever words carry them: ``没有`` -> ``未`` is kept, a dropped or added
``不`` is not).  Entities, dates and numbers are taken out of the text before the next kind is
looked for, so the ``5`` of ``2023年5月`` is not also a number and the ``19`` of an entity
``COVID-19`` is not a number at all.  Idioms whose characters are numerals but not quantities
(``一起 一般 统一 十分 千万 万一``) are not numbers.

Limits: facts are surface facts.  A paraphrase that keeps every number, date, unit, entity
and negation can still change a relation (who did what to whom), and a number written in a
form not listed above is not seen.
"""
from __future__ import annotations

import collections
import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from augment.config import FACT_KINDS

_GAP = "\x00"  # what an extracted span becomes: not a letter, digit, numeral or cue

# ----------------------------------------------------------------------------- entities


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def trie_pattern(words: Iterable[str]) -> str:
    """A regular expression matching any of ``words``, longest first at each position, as a
    character trie (one pass, cost independent of the number of words).  A word that starts
    (ends) with an ASCII letter or digit matches only at a word start (end)."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[None] = True

    def build(node: dict, last: str) -> str:
        alts = [re.escape(ch) + build(child, ch) for ch, child in sorted((k, v) for k, v in node.items() if k is not None)]
        if None in node:
            alts.append("(?![A-Za-z0-9])" if _is_word_char(last) else "")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    roots = [("(?<![A-Za-z0-9])" if _is_word_char(ch) else "") + re.escape(ch) + build(child, ch)
             for ch, child in sorted((k, v) for k, v in trie.items() if k is not None)]
    return "|".join(roots)


# ----------------------------------------------------------------------------- numbers

_ZH_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_SMALL = {"十": 10, "百": 100, "千": 1000}
_ZH_BIG = {"万": 10 ** 4, "亿": 10 ** 8}
_ZH_NUM_CHARS = "零〇一二两三四五六七八九十百千万亿"
_ZH_NUM = f"[{_ZH_NUM_CHARS}]+(?:点[零〇一二三四五六七八九]+)?"
_ZH_DIGITS_ONLY = "零〇一二三四五六七八九"

#: Words made of numerals (or starting with one) that are not quantities.
_ZH_NOT_NUMBERS = """一起 一样 一些 一般 一定 一直 一旦 一切 一致 一同 一向 一律 一再 一番 一下子 一下 一会儿 一会 一边 一面 一方面
一时 一带 一贯 一味 一心 一概 一经 一旁 一来 一系列 一体 一连 一举 一口气 一路 一身 一流 一点儿 一点点 一模一样 一目了然 独一无二 一清二楚
说一不二 三心二意 接二连三 一心一意 一帆风顺 一塌糊涂 七上八下 乱七八糟 四面八方 五颜六色 九死一生 一石二鸟 三番五次 千方百计 成千上万
千千万万 万万 万一 千万 万分 十分 百般 万物 万能 统一 唯一 同一 单一 逐一 专一 进一步 划一 合一 一无所有 数一数二 首屈一指 百分百
万众一心 一如既往 一针见血 零食 零件 零部件 零售 零钱 零星 零散 百科 三角 四季 五官 八卦 七夕 九州 两岸 十字""".split()

_EN_SMALL = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                                       "fifteen sixteen seventeen eighteen nineteen".split())}
_EN_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_EN_SCALE = {"hundred": 100, "thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_EN_WORD = "(?:" + trie_pattern([*_EN_SMALL, *_EN_TENS, *_EN_SCALE]) + ")"
_EN_NUMBER = re.compile(rf"(?<![A-Za-z'])(?:(?:a|one)\s+(?=hundred|thousand|million|billion))?{_EN_WORD}"
                        rf"(?:(?:(?<=hundred)\s+and\s+|(?<=thousand)\s+and\s+|[\s-]+){_EN_WORD})*(?![A-Za-z])", re.IGNORECASE)
_EN_NUMBER_WORDS = frozenset([*_EN_SMALL, *_EN_TENS, *_EN_SCALE])
_ONE_NOT_NUMBER = re.compile(r"(?:\b(?:no|the|this|that|which|each|every|any|another)\s+one\b|\bone\s+another\b)", re.IGNORECASE)

_SCALES = {"万": 10 ** 4, "亿": 10 ** 8, "千": 10 ** 3, "百": 10 ** 2, **_EN_SCALE}
_SCALE = re.compile(r"\s?(?:万亿|万|亿|千(?![克米瓦卡焦兆])|百(?!分)|(?:thousand|million|billion|trillion)(?![A-Za-z]))", re.IGNORECASE)

# canonical unit -> its surfaces (``|``-separated; Latin ones case-sensitive: mg is not Mg). NFKC
# has already turned ℃ into °C, µ into μ, ％ into % and full-width letters into ASCII ones.
_UNITS = {
    "mg": "mg|毫克|milligram|milligrams", "g": "g|克|gram|grams", "kg": "kg|千克|公斤|kilogram|kilograms|kilo|kilos",
    "μg": "μg|ug|mcg|微克|microgram|micrograms", "ng": "ng|纳克|nanogram|nanograms", "t": "吨|ton|tons|tonne|tonnes",
    "斤": "斤", "lb": "lb|lbs|pound|pounds",
    "ml": "ml|mL|毫升|milliliter|milliliters|millilitre|millilitres", "L": "L|升|liter|liters|litre|litres",
    "μl": "μl|μL|微升|microliter|microliters", "dL": "dL|dl|分升|deciliter|deciliters",
    "mm": "mm|毫米|millimeter|millimeters|millimetre|millimetres", "cm": "cm|厘米|公分|centimeter|centimeters|centimetre|centimetres",
    "m": "m|米|meter|meters|metre|metres", "km": "km|千米|公里|kilometer|kilometers|kilometre|kilometres",
    "nm": "nm|纳米|nanometer|nanometers", "μm": "μm|微米|micron|microns|micrometer|micrometers",
    "inch": "inch|inches|英寸", "mile": "mile|miles|英里", "ft": "ft|feet|foot|英尺",
    "°C": "°C|摄氏度|degrees Celsius|degree Celsius", "°F": "°F|华氏度|degrees Fahrenheit|degree Fahrenheit", "°": "°|degrees|degree|度",
    "h": "h|hr|hrs|hour|hours|小时|个小时|钟头|个钟头", "min": "min|mins|minute|minutes|分钟", "s": "s|sec|secs|second|seconds|秒|秒钟",
    "ms": "ms|毫秒|millisecond|milliseconds", "day": "day|days|天", "week": "week|weeks|周|个星期|星期|个礼拜",
    "month": "month|months|个月", "year": "year|years|年", "age": "岁|周岁",
    "mmHg": "mmHg|毫米汞柱", "mmol": "mmol|毫摩尔", "mol": "mol|摩尔", "IU": "IU|国际单位", "kcal": "kcal|千卡|大卡", "cal": "cal|卡路里",
    "W": "W|瓦|瓦特|watt|watts", "kW": "kW|千瓦|kilowatt|kilowatts", "V": "V|伏|伏特|volt|volts", "Hz": "Hz|赫兹|hertz",
    "kHz": "kHz|千赫", "MHz": "MHz|兆赫", "GHz": "GHz", "KB": "KB|kB", "MB": "MB", "GB": "GB", "TB": "TB",
    "元": "元|块钱|人民币|yuan|RMB|CNY", "USD": "美元|dollar|dollars|USD", "EUR": "欧元|euro|euros|EUR", "GBP": "英镑|GBP",
    "倍": "倍|fold", "%": "%|percent|per cent", "‰": "‰", "pp": "个百分点|percentage points|percentage point", "bpm": "bpm", "次": "次",
}
_UNIT_OF = {surface: unit for unit, surfaces in _UNITS.items() for surface in surfaces.split("|")}


def _unit_alt(surface: str) -> str:
    body = re.escape(surface).replace(r"\ ", r"\s+")
    return body + "(?![A-Za-z])" if _is_word_char(surface[-1]) else body


_UNIT_RE = "(?:" + "|".join(_unit_alt(s) for s in sorted(_UNIT_OF, key=len, reverse=True)) + ")"
_UNIT = re.compile(rf"\s?(?P<u1>{_UNIT_RE})(?:\s?/\s?(?P<u2>{_UNIT_RE}))?")

_ARABIC = re.compile(r"(?<![\d.])(?P<sign>[-−])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)|\d+(?:\.\d+)?)(?:st|nd|rd|th)?(?![\d])")
_CURRENCY = {"$": "USD", "¥": "元", "€": "EUR", "£": "GBP"}
_FRACTION = re.compile(rf"(?P<den>\d+(?:\.\d+)?|{_ZH_NUM})分之(?P<num>\d+(?:\.\d+)?|{_ZH_NUM})")
_ARABIC_FRACTION = re.compile(r"(?<![\d/.])(?P<num>\d+)/(?P<den>\d+)(?![\d/])")
_ZH_NUMERAL = re.compile("(?P<skip>" + trie_pattern(_ZH_NOT_NUMBERS) + f")|(?P<neg>负|零下)?(?P<num>{_ZH_NUM})")


def decimal_text(value: Decimal) -> str:
    """``3.50`` -> ``3.5``, ``1.2E+4`` -> ``12000``: one spelling per value."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def parse_zh_number(text: str) -> Decimal | None:
    """Value of a Chinese numeral (``三千五百``, ``两万三``, ``一百零五``, ``二〇二三``, ``三点五``), or None."""
    whole, _, frac = text.partition("点")
    if frac and not all(c in _ZH_DIGITS_ONLY for c in frac):
        return None
    value = _zh_integer(whole)
    if value is None:
        return None
    return Decimal(f"{value}.{''.join(str(_ZH_DIGIT[c]) for c in frac)}") if frac else Decimal(value)


def _zh_integer(text: str) -> int | None:
    if not text or not any(c in _ZH_DIGIT or c == "十" for c in text):
        return None
    if len(text) > 1 and all(c in _ZH_DIGIT for c in text):  # read digit by digit: 二〇二三
        return int("".join(str(_ZH_DIGIT[c]) for c in text))
    total, section, num, last, after_zero = 0, 0, None, 1, False
    for c in text:
        if c in _ZH_DIGIT:
            after_zero = after_zero or _ZH_DIGIT[c] == 0 and c in "零〇"
            num = _ZH_DIGIT[c]
        elif c in _ZH_SMALL:
            section += (1 if num is None else num) * _ZH_SMALL[c]
            num, last, after_zero = None, _ZH_SMALL[c], False
        elif c == "万":
            total += (section + (num or 0)) * 10 ** 4
            section, num, last, after_zero = 0, None, 10 ** 4, False
        else:  # 亿
            total = (total + section + (num or 0)) * 10 ** 8
            section, num, last, after_zero = 0, None, 10 ** 8, False
    if num is not None:  # 三千五 = 3500, 两万三 = 23000, 一百零五 = 105
        section += num * (last // 10 if last >= 100 and not after_zero else 1)
    return total + section


def _zh_value(text: str) -> Decimal | str | None:
    """A Chinese numeral's value; two adjacent digits are an approximate range (``两三`` = ``2~3``)."""
    if len(text) == 2 and all(c in _ZH_DIGIT and _ZH_DIGIT[c] for c in text):
        return f"{_ZH_DIGIT[text[0]]}~{_ZH_DIGIT[text[1]]}"
    return parse_zh_number(text)


def parse_en_number(text: str) -> Decimal | None:
    """Value of English number words (``twenty-five``, ``three hundred and two``, ``a thousand``);
    None for a run that is not one number (``two three``)."""
    total, current, seen, last = 0, 0, False, ""
    for word in re.split(r"[\s-]+", text.lower()):
        if word in ("and", "a"):
            continue
        if word in _EN_SMALL or word in _EN_TENS:
            if last in _EN_SMALL or last in _EN_TENS and word in _EN_TENS:
                return None  # two numbers side by side, not one
            current += _EN_SMALL.get(word, _EN_TENS.get(word, 0))
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _EN_SCALE:
            total += max(current, 1) * _EN_SCALE[word]
            current = 0
        else:
            return None
        seen, last = True, word
    return Decimal(total + current) if seen else None


def _number(text: str) -> Decimal | None:
    text = text.replace(",", "")
    try:
        return Decimal(text)
    except InvalidOperation:
        return parse_zh_number(text) if re.fullmatch(_ZH_NUM, text) else parse_en_number(text)


# ----------------------------------------------------------------------------- dates

_MONTHS = {m: i + 1 for i, m in enumerate("January February March April May June July August September October November December".split())}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["Sept"] = 9
_MON = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_ZH_Y = r"(?<![\d零〇一二三四五六七八九])(?:\d{4}|[零〇一二三四五六七八九]{4})"
_ZH_M = r"(?:\d{1,2}|十[一二]?|[一二三四五六七八九])"
_ZH_D = r"(?:\d{1,2}|[二三]?十[一二三四五六七八九]?|[一二三四五六七八九])"
_NOT_BEFORE = r"(?<![\d零〇一二三四五六七八九十百千万两])"
@dataclass(frozen=True)
class Clues:
    """What a text holds, so that passes that cannot match are skipped."""

    digit: bool
    numeral: bool
    words: set
    month: bool


def _zh(has: Clues) -> bool:
    return has.digit or has.numeral


#: (when to look, pattern) in order: Chinese, ISO and US numeric, English month-name dates.
_DATE_PATTERNS = [
    (_zh, re.compile(rf"(?P<y>{_ZH_Y})\s*年\s*(?:(?P<m>{_ZH_M})\s*月份?\s*(?:(?P<d>{_ZH_D})\s*[日号])?)?")),
    (_zh, re.compile(rf"{_NOT_BEFORE}(?P<m>{_ZH_M})\s*月份?\s*(?:(?P<d>{_ZH_D})\s*[日号])?")),
    (lambda has: has.digit, re.compile(r"(?<![\d.])(?P<y>\d{4})(?P<sep>[-/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})(?![\d])")),
    (lambda has: has.digit, re.compile(r"(?<![\d.])(?P<y>\d{4})-(?P<m>0[1-9]|1[0-2])(?![\d-])")),
    (lambda has: has.digit, re.compile(r"(?<![\d/])(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})(?![\d/])")),
    (lambda has: has.month and has.digit, re.compile(rf"\b(?P<mn>{_MON})\s+(?P<d>{_DAY})(?:,?\s+(?P<y>\d{{4}}))?(?![\d])")),
    (lambda has: has.month and has.digit,
     re.compile(rf"(?<![\d.])(?P<d>{_DAY})\s+(?:of\s+)?(?P<mn>{_MON})(?:,?\s+(?P<y>\d{{4}}))?(?![A-Za-z\d])")),
    (lambda has: has.month and has.digit, re.compile(rf"\b(?P<mn>{_MON}),?\s+(?P<y>\d{{4}})(?![\d])")),
    (lambda has: has.month, re.compile(r"\b(?P<mn>January|February|March|April|June|July|August|September|October|November|December)\b")),
]
_MONTH_WORDS = frozenset(m.lower() for m in _MONTHS)
_LATIN_WORD = re.compile(r"[a-z]+")
_DIGIT = re.compile(r"\d")
_ZH_NUMERAL_CHAR = re.compile(f"[{_ZH_NUM_CHARS}]")


def _date_part(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.rstrip(".")
    if text in _MONTHS:
        return _MONTHS[text]
    value = _number(re.sub(r"(?:st|nd|rd|th)$", "", text))
    return None if value is None else int(value)


def _date_value(match: re.Match) -> str | None:
    """``2023-05-05`` / ``2023-05`` / ``--05-05`` / ``--05`` / ``2023``, or None for an impossible date."""
    groups = match.groupdict()
    year, day = _date_part(groups.get("y")), _date_part(groups.get("d"))
    month = _date_part(groups.get("m") or groups.get("mn"))
    if month is not None and not 1 <= month <= 12 or day is not None and not 1 <= day <= 31:
        return None
    parts = [f"{year:04d}" if year is not None else "-"]
    parts += [f"{month:02d}"] if month is not None else []
    parts += [f"{day:02d}"] if day is not None else []
    return "-".join(parts)


# ----------------------------------------------------------------------------- negations

_ZH_NEGATORS = "不没未无非别勿否"
#: Words holding a negator character that do not negate (or double negatives that affirm).
_ZH_NOT_NEGATIONS = """不过 不仅 不但 不断 不久 不管 不论 不料 不禁 不免 不妨 不少 不错 不止 不时 不光 不单 要不 不由得 差不多 了不起
对不起 不得不 不可不 忍不住 禁不住 不一会 没收 淹没 埋没 出没 沉没 吞没 覆没 湮没 隐没 没落 未来 未免 未尝不 无论 无锡 无线 无数 无聊
无比 无非 无疑 无不 无穷 无机 无人机 无时无刻 不无 非常 非洲 除非 莫非 是非 非凡 非但 特别 区别 分别 告别 离别 差别 类别 级别 个别 性别
识别 鉴别 辨别 判别 派别 别人 别的 别处 别墅 别名 别称 别致 别针 送别 道别 诀别 有别 是否 能否 可否 否则 与否 不丹
独一无二 一无所有 说一不二""".split()
_ZH_NEGATOR_CHAR = re.compile(f"[{_ZH_NEGATORS}]")
_EN_NEGATION_WORDS = frozenset("not no never without cannot nor neither none nobody nothing nowhere".split())
_ZH_NEGATION = re.compile("(?P<skip>" + trie_pattern(_ZH_NOT_NEGATIONS) + f")|(?P<cue>[{_ZH_NEGATORS}])")
_EN_NEGATION = re.compile(r"(?P<skip>\bnot\s+only\b|\bno\s+doubt\b|\bNo\.\s*(?=\d))|(?P<cue>n['’]t\b|\bno\s+one\b|\b(?:not|no|never|without|cannot|nor|neither"
                          r"|none|nobody|nothing|nowhere)\b)", re.IGNORECASE)


# ----------------------------------------------------------------------------- extraction


class FactExtractor:
    """Extracts the facts of a text (see the module notes); one per knowledge graph.

    ``surfaces``: entity surface -> entity name (every name and alias of the graph)."""

    def __init__(self, surfaces: Mapping[str, str] | None = None):
        self.entity_of = {unicodedata.normalize("NFKC", s): name for s, name in (surfaces or {}).items() if s.strip()}
        self.entity_re = re.compile(trie_pattern(self.entity_of)) if self.entity_of else None
        # a parent is compared with each of its variants: its facts are extracted once
        self.facts = functools.lru_cache(maxsize=512)(self.extract)

    def extract(self, text: str) -> dict[str, collections.Counter]:
        """The facts of ``text``: kind -> Counter of normalised values (``facts`` is the cached
        form; do not mutate what it returns)."""
        found = {kind: collections.Counter() for kind in FACT_KINDS}
        rest = unicodedata.normalize("NFKC", text)  # full-width digits and letters, ％, ℃ -> °C

        def record(kind: str, value: str | None) -> bool:
            if value:
                found[kind][value] += 1
            return True

        if self.entity_re is not None:
            rest = self._take(self.entity_re, rest, lambda m: record("entity", self.entity_of[m.group()]))
        # cheap tests first: most passes cannot match most texts (a third of the time on short documents)
        words = set(_LATIN_WORD.findall(rest.lower()))
        has = Clues(digit=bool(_DIGIT.search(rest)), numeral=bool(_ZH_NUMERAL_CHAR.search(rest)), words=words,
                    month=bool(words & _MONTH_WORDS))
        for needs, pattern in _DATE_PATTERNS:  # an impossible date (13月) stays text
            if needs(has):
                rest = self._take(pattern, rest, lambda m: bool(_date_value(m)) and record("date", _date_value(m)))
        if _ZH_NEGATOR_CHAR.search(rest):
            rest = self._take(_ZH_NEGATION, rest, lambda m: record("negation", m.group("cue")))
        if words & _EN_NEGATION_WORDS or "n't" in rest or "n’t" in rest:
            rest = self._take(_EN_NEGATION, rest, lambda m: record("negation", m.group("cue") and m.group("cue").lower().replace("’", "'")))
        _take_numbers(rest, found, has)
        return found

    @staticmethod
    def _take(pattern: re.Pattern, text: str, record) -> str:
        """``text`` with every match of ``pattern`` that ``record`` accepts (answers True) blanked out."""
        return pattern.sub(lambda m: _GAP if record(m) else m.group(), text)

    def changes(self, parent: str, variant: str, kinds: Iterable[str] = FACT_KINDS,
                expected: Mapping[str, collections.Counter] | None = None) -> dict[str, dict]:
        """What ``variant`` lost or gained relative to ``parent`` (empty when all facts are kept).

        ``expected`` replaces the parent's multiset for a kind (counterfactual entity swaps
        say which entities the variant should name instead)."""
        return compare_facts({**self.facts(parent), **(expected or {})}, self.facts(variant), kinds)


def compare_facts(original: Mapping[str, collections.Counter], variant: Mapping[str, collections.Counter],
                  kinds: Iterable[str] = FACT_KINDS) -> dict[str, dict]:
    """Per kind whose multisets differ: ``{"missing": [...], "added": [...]}`` (negations: the
    counts differ; the cues on each side that the other lacks are listed)."""
    out = {}
    for kind in kinds:
        a, b = original.get(kind, collections.Counter()), variant.get(kind, collections.Counter())
        same = sum(a.values()) == sum(b.values()) if kind == "negation" else a == b
        if not same:
            out[kind] = {"missing": sorted((a - b).elements()), "added": sorted((b - a).elements())}
            if kind == "negation":
                out[kind].update(original=sum(a.values()), variant=sum(b.values()))
    return out


def _quantity(value: Decimal | str, text: str, end: int, found: dict, sign: str = "", currency: str | None = None) -> int:
    """Record ``value`` (a number, or an already spelled ratio or range: ``140/90``, ``2~3``) with
    its scale and unit read from ``text[end:]``; returns where the quantity ends."""
    scale = _SCALE.match(text, end) if isinstance(value, Decimal) else None
    if scale and not _UNIT.match(text, end):
        word = scale.group().strip().lower()
        value *= _SCALES["万"] * _SCALES["亿"] if word == "万亿" else _SCALES[word]
        end = scale.end()
    unit = currency
    match = _UNIT.match(text, end)
    if match and currency is None:
        unit = _UNIT_OF[re.sub(r"\s+", " ", match.group("u1"))]
        per = match.group("u2")
        end = match.end()
        if per is not None:
            unit += "/" + _UNIT_OF[re.sub(r"\s+", " ", per)]
    if isinstance(value, str):
        number = value
    else:
        number = decimal_text(-value if sign and value else value)
    if unit in ("%", "‰"):
        found["number"][number + unit] += 1
    else:
        found["number"][f"{number} {unit}" if unit else number] += 1
    if unit:
        found["unit"][unit] += 1
    return end


def _sign(text: str, match: re.Match) -> tuple[str, int]:
    """(``-`` or ``""``, characters of a sign word before the match): a minus sign that is not a
    range dash (``3-5``, ``3 - 5``) nor joins a word (``IL-6``), or ``负`` / ``零下`` just before."""
    groups = match.groupdict()
    start = match.start()
    before = text[max(0, start - 8):start]
    if groups.get("neg"):
        return "-", 0
    for word in ("负", "零下"):
        if before.endswith(word):
            return "-", len(word)
    if not groups.get("sign") or start and _is_word_char(text[start - 1]) or before.rstrip()[-1:].isdigit():
        return "", 0
    return "-", 0


def _take_numbers(text: str, found: dict, has: Clues) -> str:
    """Record every quantity of ``text`` (fractions, percentages, Arabic, English words, Chinese numerals)."""
    def fraction(m: re.Match) -> str:
        den_text, num = m.group("den"), _number(m.group("num"))
        mark = {"百": "%", "一百": "%", "千": "‰", "一千": "‰"}.get(den_text)
        den = None if mark else _number(den_text)
        if num is None or den is None and not mark:
            return m.group()
        if mark:
            found["number"][decimal_text(num) + mark] += 1
            found["unit"][mark] += 1
        else:
            found["number"][f"{decimal_text(num)}/{decimal_text(den)}"] += 1
        return _GAP

    if "分之" in text:
        text = _FRACTION.sub(fraction, text)
    if has.digit:  # 1/3, and 140/90 mmHg with its unit
        text = _sub_quantities(_ARABIC_FRACTION, text, found, lambda m: f"{int(m.group('num'))}/{int(m.group('den'))}")
        text = _sub_quantities(_ARABIC, text, found, lambda m: _number(m.group("num")), currency_before=True)
    if has.words & _EN_NUMBER_WORDS:
        spans_one = [m.span() for m in _ONE_NOT_NUMBER.finditer(text)]
        text = _sub_quantities(_EN_NUMBER, text, found,
                               lambda m: None if any(s <= m.start() < e for s, e in spans_one) else parse_en_number(m.group()))
    if has.numeral:
        text = _sub_quantities(_ZH_NUMERAL, text, found, lambda m: None if m.group("skip") else _zh_value(m.group("num")))
    return text


def _sub_quantities(pattern: re.Pattern, text: str, found: dict, value_of, currency_before: bool = False) -> str:
    out, prev = [], 0
    for match in pattern.finditer(text):
        if match.start() < prev:
            continue
        value = value_of(match)
        if value is None:
            continue
        start, currency = match.start(), None
        if currency_before and start and text[start - 1] in _CURRENCY:
            start, currency = start - 1, _CURRENCY[text[start - 1]]
        sign, prefix = _sign(text, match)
        start = max(prev, start - prefix)
        end = _quantity(value, text, match.end(), found, sign, currency)
        out += [text[prev:start], _GAP]
        prev = end
    out.append(text[prev:])
    return "".join(out)
