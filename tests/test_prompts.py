"""The one prompt template: system prompt from the file, images before text, lettered choices."""

from __future__ import annotations

from tgrl.prompts import build_messages, build_user_text, format_response, load_template, system_prompt


def test_template_file_drives_system_prompt():
    template = load_template()
    assert system_prompt() == template["system"].strip()
    assert "<think>" in system_prompt() and "<answer>" in system_prompt()


def test_messages_put_images_first_and_letter_choices():
    msgs = build_messages("Which is larger?", choices=["3", "5"], n_images=2)
    assert [m["role"] for m in msgs] == ["system", "user"]
    content = msgs[1]["content"]
    assert content[:2] == [{"type": "image"}, {"type": "image"}]
    assert content[2]["text"] == "Which is larger?\nChoices:\n(A) 3\n(B) 5"
    assert build_user_text("  Q?  ") == "Q?"


def test_response_format():
    assert (
        format_response("red 1, blue 2, 1+2=3", "3")
        == "<think>red 1, blue 2, 1+2=3</think><answer>3</answer>"
    )


def test_custom_template_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        'system: "S"\nuser: "Q: {question}"\nchoices: " [{options}]"\nchoice_line: "{letter}={text}"\n'
    )
    msgs = build_messages("x", choices=["a", "b"], template_path=str(path))
    assert msgs[0]["content"][0]["text"] == "S"
    assert msgs[1]["content"][-1]["text"] == "Q: x [A=a\nB=b]"
