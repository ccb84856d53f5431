from pipeline.stages.instances import clean_input, is_classification_by_rules, labels_from_instruction, needs_input, parse_labels
from pipeline.stages.parsing import parse_numbered_list, parse_yes_no


def test_numbered_list_styles_and_preamble():
    text = ("Sure! Here are some new tasks:\n\n1. Write a haiku about rain.\n2) Explain how tides work.\n"
            "**3.** Convert 5 miles to kilometres.\nTask 4: Suggest a name for a bakery.\n- List three uses of salt.\n"
            "* Rewrite the sentence in the passive voice.\n   7 - Describe a sunrise\n   in two sentences.\n")
    assert parse_numbered_list(text) == [
        "Write a haiku about rain.", "Explain how tides work.", "Convert 5 miles to kilometres.",
        "Suggest a name for a bakery.", "List three uses of salt.", "Rewrite the sentence in the passive voice.",
        "Describe a sunrise in two sentences.",
    ]


def test_truncated_last_item_dropped():
    text = "1. Plan a picnic for six people.\n2. Explain why the ocean is sal"
    assert parse_numbered_list(text, finish_reason="length") == ["Plan a picnic for six people."]
    assert parse_numbered_list(text, finish_reason="stop")[-1] == "Explain why the ocean is sal"


def test_no_list_is_empty():
    assert parse_numbered_list("I cannot think of anything right now.") == []
    assert parse_numbered_list("") == []


def test_quotes_and_prefixes_stripped():
    assert parse_numbered_list('1. "Instruction: Name a river in Africa."') == ["Name a river in Africa."]


def test_yes_no():
    assert parse_yes_no("Yes") is True
    assert parse_yes_no("no, it is not") is False
    assert parse_yes_no("The answer is YES.") is True
    assert parse_yes_no("Maybe") is None


def test_labels_and_rules():
    assert labels_from_instruction("Classify the tweet as positive or negative.") == ["positive", "negative"]
    assert labels_from_instruction("Decide whether the given email is spam or not.") == ["spam", "not spam"]
    assert labels_from_instruction("Label each fruit as sweet, sour, or bitter.") == ["sweet", "sour", "bitter"]
    assert is_classification_by_rules("Tell if the number is odd or even.")
    assert not is_classification_by_rules("Write a story about a cat or a dog.")
    assert not is_classification_by_rules("Explain why the sky is blue.")
    assert parse_labels("Positive, Negative, Neutral") == ["Positive", "Negative", "Neutral"]
    assert parse_labels("1. Spam\n2. Not spam\n3. Spam") == ["Spam", "Not spam"]


def test_needs_input_and_clean_input():
    assert needs_input("Summarize the following paragraph.")
    assert needs_input("Fix the bug in this function.")
    assert not needs_input("Explain why the sky is blue.")
    assert clean_input("Here is an example input:\n42, 7, 3") == "42, 7, 3"
    assert clean_input('Input: "Hello there"') == "Hello there"


# --- structured answers: JSON first, None when the text is not that JSON (the caller falls back) ----------------

from pipeline.stages.parsing import json_choice, json_string_list  # noqa: E402


def test_json_list_whole_fenced_and_cleaned():
    text = '```json\n{"instructions": ["1. Name a river in Africa.", "  Explain   tides. ", "", 7]}\n```'
    assert json_string_list(text, "instructions") == (["Name a river in Africa.", "Explain tides."], None)


def test_json_list_cut_by_the_length_limit_keeps_the_closed_strings():
    text = '{"instructions": ["Plan a picnic for six people.", "Write a haiku about \\"rain\\".", "Explain why the oc'
    assert json_string_list(text, "instructions", "length") == (
        ["Plan a picnic for six people.", 'Write a haiku about "rain".'], "Explain why the oc")
    assert json_string_list(text, "instructions", "stop")[1] is None


def test_not_that_json_falls_back():
    assert json_string_list("1. Plan a picnic.\n2. Explain tides.", "instructions") is None
    assert json_string_list('{"tasks": ["Plan a picnic."]}', "instructions") is None
    assert json_string_list('{"instructions": "Plan a picnic."}', "instructions") is None


def test_json_choice():
    assert json_choice('{"answer": "yes"}', "answer", ["Yes", "No"]) == "Yes"
    assert json_choice('{"verdict": "Not Equal"}', "verdict", ["Equal", "Not Equal"]) == "Not Equal"
    assert json_choice('{"answer": "Maybe"}', "answer", ["Yes", "No"]) is None
    assert json_choice("Yes", "answer", ["Yes", "No"]) is None


def test_structured_answers_through_the_stage_parsers():
    from pipeline.stages.evolve import parse_equal
    from pipeline.stages.instances import parse_labels_answer, parse_yes_no_answer
    from pipeline.train.evaluate import parse_verdict

    assert parse_yes_no_answer('{"answer": "No"}') is False and parse_yes_no_answer("Yes.") is True
    assert parse_labels_answer('{"labels": ["Spam", "Not spam", "spam"]}') == ["Spam", "Not spam"]
    assert parse_labels_answer("Spam, Not spam") == ["Spam", "Not spam"]
    assert parse_equal('{"verdict": "Equal"}') is True and parse_equal('{"verdict": "Not Equal"}') is False
    assert parse_verdict('{"verdict": "B"}') == "B" and parse_verdict('{"verdict": "tie"}') == "tie"
