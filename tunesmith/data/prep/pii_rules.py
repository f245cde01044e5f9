"""Rule-based PII detection: patterns find candidates, real validators confirm them.

Checksums and number formats come from maintained libraries (python-stdnum: IBAN, Luhn, SSN;
phonenumbers: Google's libphonenumber; ipaddress: the standard library). Only the candidate patterns
and the date formats are written here, because no library finds dates *in running text* cheaply and
precisely (dateparser's search is slow and matches ordinary words).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as us_ssn

ENTITY_TYPES = ("PERSON", "EMAIL", "PHONE", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "URL", "DATE", "ID_NUMBER", "ADDRESS", "BANK_ACCOUNT")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    detector: str  # "rule:<name>" or "ner", for the audit log


EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()]+", re.I)
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){11,18}(?![\d-])")
CARD_CONTEXT = re.compile(r"\b(?:card|cc|credit|debit|visa|mastercard|maestro|amex)\b", re.I)
CALL_ABROAD = re.compile(r"(?<![\d+-])00[1-9]\d*(?:[ ()-]{1,2}\d+){1,5}(?![\d-])")  # grouped, as written to be dialled
SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
# "passport no. X1234567", "driver's license: D123-456", "ID number 12345678"
ID_AFTER_KEYWORD = re.compile(
    r"\b(?:passport|driver'?s? ?licen[cs]e|licen[cs]e|national id|id|identity card|tax id|ssn|social security)"
    r"(?:\s*(?:no\.?|number|num\.?|#))?\s*[:#]?\s*(?P<value>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{4,19})\b",
    re.I,
)
MONTHS = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
DATE = re.compile(
    r"\b(?:"
    r"\d{4}-\d{1,2}-\d{1,2}"  # 2024-03-05
    r"|\d{1,2}[/.]\d{1,2}[/.](?:\d{4}|\d{2})"  # 03/29/1982, 29.03.1982, 3/29/82
    r"|" + MONTHS + r"\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}"  # March 29, 1982
    r"|\d{1,2}(?:st|nd|rd|th)? (?:of )?" + MONTHS + r"\.?,? \d{4}"  # 29 March 1982
    r")\b",
    re.I,
)


def _trim_url(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in ".,;:!?":
        end -= 1
    return end


def is_card_number(digits: str) -> bool:
    """12-19 digits, Luhn-valid."""
    return digits.isdigit() and 12 <= len(digits) <= 19 and luhn.is_valid(digits)


def find_rule_spans(text: str, phone_region: str = "US") -> list[Span]:
    spans: list[Span] = []
    for m in EMAIL.finditer(text):
        spans.append(Span(m.start(), m.end(), "EMAIL", "rule:email"))
    for m in URL.finditer(text):
        spans.append(Span(m.start(), _trim_url(text, m.start(), m.end()), "URL", "rule:url"))
    for pattern in (IPV4, IPV6):
        for m in pattern.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            spans.append(Span(m.start(), m.end(), "IP_ADDRESS", "rule:ip"))
    for m in IBAN.finditer(text):
        if stdnum_iban.is_valid(m.group()):
            spans.append(Span(m.start(), m.end(), "IBAN", "rule:iban"))
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        # Any number passes Luhn one time in ten: a 12-digit (Maestro) number, or one starting with 0 (ISO/IEC 7812
        # keeps industry identifier 0 off payment cards; "00420 772 505 236" is a call abroad), needs a card word nearby.
        plain = len(digits) >= 13 and not digits.startswith("0")
        if is_card_number(digits) and (plain or CARD_CONTEXT.search(text[max(0, m.start() - 40) : m.start()])):
            spans.append(Span(m.start(), m.end(), "CREDIT_CARD", "rule:credit_card_luhn"))
    for m in SSN.finditer(text):
        if us_ssn.is_valid(m.group()):
            spans.append(Span(m.start(), m.end(), "ID_NUMBER", "rule:us_ssn"))
    for m in ID_AFTER_KEYWORD.finditer(text):
        spans.append(Span(m.start("value"), m.end("value"), "ID_NUMBER", "rule:id_after_keyword"))
    for m in DATE.finditer(text):
        spans.append(Span(m.start(), m.end(), "DATE", "rule:date"))
    for match in phonenumbers.PhoneNumberMatcher(text, phone_region, leniency=phonenumbers.Leniency.VALID):
        spans.append(Span(match.start, match.end, "PHONE", "rule:phonenumbers"))
    for m in CALL_ABROAD.finditer(text):  # "00421 52 741 2553": 00 is the ITU's international prefix, + written out
        try:
            number = phonenumbers.parse("+" + re.sub(r"\D", "", m.group())[2:])
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            spans.append(Span(m.start(), m.end(), "PHONE", "rule:phonenumbers"))
    return spans
