"""Chat rendering: the plain template, a Hugging Face chat template, and demonstrations cut into
model turns and the rest exactly as an episode renders them."""

import pytest

from rlvr import chat
from rlvr.tokenizer import ByteTokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many?"},
            {"role": "assistant", "content": "<tool_call>{}</tool_call>"}, {"role": "tool", "content": "n\n3"},
            {"role": "assistant", "content": "<tool_call>{\"name\": \"answer\"}</tool_call>"}]


def test_plain_template():
    tok = ByteTokenizer()
    assert chat.render(tok, MESSAGES[:2]) == "<system>\nBe brief.\n<user>\nHow many?\n<assistant>\n"
    assert chat.after_turn(tok, MESSAGES[:2], [MESSAGES[3]]) == "\n<tool>\nn\n3\n<assistant>\n"


def test_transcript_ids_are_an_episodes():
    tok = ByteTokenizer()
    prompt, pieces = chat.transcript_ids(tok, MESSAGES)
    assert [trained for _, trained in pieces] == [True, False, True]
    text = tok.decode(prompt + [i for ids, _ in pieces for i in ids])
    assert text + "\n" == chat.render(tok, MESSAGES, add_generation_prompt=False)
    with pytest.raises(ValueError, match="first prompt"):
        chat.transcript_ids(tok, MESSAGES[2:])


class ChatMLTokenizer:
    """A Hugging Face tokenizer built here (no download) with a ChatML chat template."""

    def __init__(self):
        tokenizers = pytest.importorskip("tokenizers")
        transformers = pytest.importorskip("transformers")
        inner = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        self.inner = transformers.PreTrainedTokenizerFast(tokenizer_object=inner, chat_template=template)


def test_a_tokenizers_chat_template_closes_the_models_turn():
    tok = ChatMLTokenizer()
    assert chat.render(tok, MESSAGES[:2]).endswith("<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n")
    # the model's turn ends without <|im_end|> (generation stopped at a stop string): the template adds it
    assert chat.after_turn(tok, MESSAGES[:2], [MESSAGES[3]]) == (
        "<|im_end|>\n<|im_start|>tool\nn\n3<|im_end|>\n<|im_start|>assistant\n")
