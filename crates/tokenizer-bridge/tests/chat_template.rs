//! The Qwen3-4B-Instruct-2507 chat template renders exactly as transformers renders it
//! with jinja2 (fixtures from scripts/gen_tokenizer_fixtures.py), and training pairs
//! split it into a masked prompt and a reply ending in <|im_end|>.

mod common;

use common::{chat_fixture, tok};
use tokenizer_bridge::{ChatMessage, Error};

fn render(case: &common::ChatCase) -> String {
    match &case.tools_json {
        Some(tools) => {
            tok().apply_chat_template_with_tools(&case.messages, tools, case.add_generation_prompt)
        }
        None => tok().apply_chat_template(&case.messages, case.add_generation_prompt),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

#[test]
fn every_fixture_conversation_renders_like_transformers() {
    let fixture = chat_fixture();
    let names: Vec<_> = fixture.cases.iter().map(|c| c.name.as_str()).collect();
    for required in [
        "user_only",
        "system_user",
        "multi_turn",
        "assistant_think",
        "tools_user",
        "tool_responses",
    ] {
        assert!(names.contains(&required), "fixture lacks {required}");
    }
    for case in &fixture.cases {
        let got = render(case);
        if got != case.rendered {
            let at = got
                .bytes()
                .zip(case.rendered.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "{}: differs at byte {at}\n got: {:?}\nwant: {:?}",
                case.name,
                &got[got.floor_char_boundary(at)..],
                &case.rendered[case.rendered.floor_char_boundary(at)..]
            );
        }
        assert_eq!(
            tok().encode(&got, true).unwrap(),
            case.ids,
            "{}: ids",
            case.name
        );
    }
}

#[test]
fn generation_prompt_is_appended_only_when_asked() {
    let msgs = [ChatMessage::system("S"), ChatMessage::user("U")];
    let with = tok().apply_chat_template(&msgs, true).unwrap();
    let without = tok().apply_chat_template(&msgs, false).unwrap();
    assert_eq!(
        without,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    );
    assert_eq!(with, format!("{without}<|im_start|>assistant\n"));
}

#[test]
fn training_pair_masks_the_prompt_and_ends_the_reply_with_im_end() {
    let case = chat_fixture()
        .cases
        .into_iter()
        .find(|c| c.name == "training_conversation")
        .unwrap();
    let (prompt, response) = tok().render_training_pair(&case.messages).unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    assert_eq!(response, "Tokyo (東京). 🗼<|im_end|>");
    // The template's full rendering is prompt + reply + its trailing newline.
    assert_eq!(format!("{prompt}{response}\n"), case.rendered);
    let n = case.messages.len();
    assert_eq!(
        prompt,
        tok()
            .apply_chat_template(&case.messages[..n - 1], true)
            .unwrap()
    );

    let (prompt_ids, response_ids) = tok().encode_training_pair(&case.messages).unwrap();
    assert_eq!(response_ids.last(), Some(&tok().im_end_id()));
    let joined: Vec<u32> = prompt_ids.iter().chain(&response_ids).copied().collect();
    assert_eq!(
        joined[..],
        case.ids[..case.ids.len() - 1],
        "separate encoding splits on a token boundary"
    );
}

#[test]
fn training_pair_keeps_think_blocks_in_the_reply() {
    let case = chat_fixture()
        .cases
        .into_iter()
        .find(|c| c.name == "assistant_think")
        .unwrap();
    let (prompt, response) = tok().render_training_pair(&case.messages).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nIs 97 prime?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(
        response.starts_with("<think>\n") && response.ends_with("Yes, 97 is prime.<|im_end|>"),
        "{response:?}"
    );
}

#[test]
fn training_pair_with_tools_puts_the_schemas_in_the_prompt() {
    let case = chat_fixture()
        .cases
        .into_iter()
        .find(|c| c.name == "tools_user")
        .unwrap();
    let tools = case.tools_json.as_deref().unwrap();
    let mut msgs = case.messages.clone();
    msgs.push(ChatMessage::assistant(
        "<tool_call>\n{\"name\": \"noop\", \"arguments\": {}}\n</tool_call>",
    ));
    let (prompt, response) = tok().render_training_pair_with_tools(&msgs, tools).unwrap();
    assert_eq!(
        prompt, case.rendered,
        "prompt equals the fixture's generation prompt"
    );
    assert!(response.starts_with("<tool_call>") && response.ends_with("</tool_call><|im_end|>"));
}

#[test]
fn training_pair_rejects_conversations_not_ending_with_the_assistant() {
    let err = tok()
        .render_training_pair(&[ChatMessage::user("a"), ChatMessage::user("b")])
        .unwrap_err();
    assert!(
        matches!(&err, Error::LastMessageNotAssistant { index: 1, role } if role == "user"),
        "{err}"
    );
    let err = tok()
        .render_training_pair(&[ChatMessage::assistant("a")])
        .unwrap_err();
    assert!(
        matches!(err, Error::ConversationTooShort { len: 1 }),
        "{err}"
    );
}

#[test]
fn bad_tools_json_is_a_clear_error() {
    let err = tok()
        .apply_chat_template_with_tools(&[ChatMessage::user("x")], "{\"a\": 1}", true)
        .unwrap_err();
    assert!(
        err.to_string().contains("tools must be a JSON array"),
        "{err}"
    );
}
