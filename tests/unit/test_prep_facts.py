"""The `facts` strategy: statements made explicit, facts found, several renderings each, no LLM."""

import pytest

from tunesmith.data.prep.facts import FactsConfig, chunk_items, chunk_statements, load_spacy, name_like
from tunesmith.data.prep.rows import Chunk
from tunesmith.data.prep.synthesize import STRATEGIES, GenerateConfig, PairFilter, generate_pairs, names_subject

COMPANY = ("## Velmora Labs\n\nVelmora Labs makes ceramic water filters. It is headquartered in Corran. "
           "Its logo shows a heron. Founded in 1987 by Ilsa Morrow, the company grew slowly at first.")
SHIP = "## Wissta\n\n- Home port: Korkburg\n- Launched: 1982\n\nThe Wissta is commanded by Captain Noor Drindles."
BAND = ("# Music\n\nIn 2006, Graball Collective got together in Mamby. Oona Stuxra sings lead vocals. "
        "Their first album was called Northern Rivers.")


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def _pairs(text, topic=None, **settings):
    items, _ = chunk_items(text, topic, FactsConfig(**settings))
    return {(i.question, i.answer) for i in items}, items


def test_statements_name_their_subject(nlp):
    texts = [s.text for s in chunk_statements(COMPANY, "Companies > Velmora Labs", nlp)]
    assert "Velmora Labs is headquartered in Corran." in texts  # "It" resolved
    assert "Velmora Labs' logo shows a heron." in texts  # "Its" resolved
    assert "Velmora Labs was founded in 1987 by Ilsa Morrow." in texts  # fronted participle split off
    assert "Velmora Labs grew slowly at first." in texts  # "the company" is the paragraph's subject
    band = [s.text for s in chunk_statements(BAND, "Music", nlp)]
    assert band[0] == "Graball Collective got together in Mamby in 2006."  # fronted adverbial moved to the end
    assert "Graball Collective's first album was called Northern Rivers." in band  # "Their" = the paragraph's subject


def test_key_value_lines_become_statements_about_the_heading(nlp):
    texts = [s.text for s in chunk_statements(SHIP, "Ships > Wissta", nlp)]
    assert texts[:2] == ["The home port of Wissta is Korkburg.", "Wissta was launched in 1982."]


def test_each_fact_gets_several_renderings():
    pairs, items = _pairs(COMPANY, "Companies > Velmora Labs", per_fact=10)
    for expected in [
        ("When was Velmora Labs founded?", "1987"),
        ("In what year was Velmora Labs founded?", "1987"),
        ("Who founded Velmora Labs?", "Ilsa Morrow"),
        ("Where is Velmora Labs headquartered?", "Corran"),
        ("What does Velmora Labs make?", "ceramic water filters"),
        ("Fill in the blank: Velmora Labs is headquartered in ___.", "Corran"),
        ("Velmora Labs was founded in what year by Ilsa Morrow?", "1987"),
    ]:
        assert expected in pairs, expected
    about = [i for i in items if i.rendering == "about"]
    assert about and about[0].question == "Tell me about Velmora Labs." and "1987" in about[0].answer
    # per_fact caps the renderings of one fact
    _, few = _pairs(COMPANY, "Companies > Velmora Labs", per_fact=1, about=False)
    facts = [(i.fact, i.answer) for i in few]
    assert len(facts) == len(set(facts))


def test_answers_come_from_the_chunk_and_questions_never_contain_them():
    for text, topic in ((COMPANY, "Companies > Velmora Labs"), (SHIP, "Ships > Wissta"), (BAND, "Music")):
        _, items = _pairs(text, topic)
        for item in items:
            if item.rendering != "about":
                assert item.answer.lower() in text.lower(), item
                assert item.answer.lower() not in item.question.lower(), item


def test_renderings_are_deterministic_per_seed():
    first = [i.question for i in _pairs(COMPANY, None, per_fact=2)[1]]
    assert first == [i.question for i in _pairs(COMPANY, None, per_fact=2)[1]]
    assert first != [i.question for i in _pairs(COMPANY, None, per_fact=2, seed=1)[1]]


def test_headings_that_name_something():
    assert name_like("Kraelzend Group") and name_like("Orbit Billing API")
    assert name_like("Wissta", "Captain Drindles commands the Wissta.") and not name_like("Music", "Music is loud.")
    assert name_like("Wethun beetle", "The Wethun beetle lives in the forest.")
    assert not name_like("Rate limits and errors") and not name_like("Harbour register") and not name_like(None)


def test_facts_strategy_needs_no_teacher_and_marks_rows():
    chunks = [Chunk(chunk_id="c#0", doc_id="c", topic="Companies > Velmora Labs", text=COMPANY),
              Chunk(chunk_id="d#0", doc_id="d", topic="", text="# Contents")]
    assert not STRATEGIES["facts"].uses_teacher and STRATEGIES["json_list"].uses_teacher
    accepted, rejects = generate_pairs(chunks, GenerateConfig(strategy="facts"))
    assert accepted and all(r.strategy == "facts" and r.teacher == "facts" for r in accepted)
    assert {r.rendering for r in accepted} >= {"question", "cloze", "about"}
    assert any(r.reason.startswith("no fact found in the chunk") and r.chunk_id == "d#0" for r in rejects)


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ValueError, match="unknown strategy 'magic'; one of: json_list"):
        GenerateConfig(strategy="magic")


def test_the_question_check_rejects_questions_about_the_page():
    pair_filter = PairFilter(GenerateConfig())
    chunk = Chunk(text=COMPANY)
    assert pair_filter.question_problem("When was Velmora Labs founded?", chunk) is None
    assert "refers to the text" in pair_filter.question_problem("What is the origin of the information in the text?", chunk)
    assert "names nothing" in pair_filter.question_problem("What is the answer to this riddle?", chunk)
    assert "not a question" in pair_filter.question_problem("Velmora Labs was founded", chunk)
    assert pair_filter.question_problem("Fill in the blank: Velmora Labs was founded in ___.", chunk, "instruction") is None
    assert pair_filter.reject_reason("Was Velmora Labs founded in 1987?", "1987", chunk) == "question gives its answer away"
    assert names_subject("How long are payloads kept?", "Payloads above 256 kilobytes are rejected.")


def test_a_fronted_time_phrase_with_a_determiner_moves_and_is_asked_for():
    # "Every May," is a noun phrase whose head modifies the verb: the statement starts with its subject, and the
    # month is asked for with a capitalised wh-phrase
    text = "## Orvel Fair\n\nEvery May, Orvel Fair fills the streets of Dunmere."
    pairs, items = _pairs(text, "Fairs > Orvel Fair", per_fact=10)
    assert "Orvel Fair fills the streets of Dunmere every May." in {i.fact for i in items}
    assert ("When does Orvel Fair fill the streets of Dunmere?", "May") in pairs
    assert all(q[:1].isupper() for q, _ in pairs), sorted(q for q, _ in pairs if not q[:1].isupper())
