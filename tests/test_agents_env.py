"""The environment API: tool-call parsing, tools in the sandbox, determinism under a seed."""

import os

import pytest

from tether.envs import make_env
from tether.envs.base import Environment
from tether.envs.files import FileTree, clean_path
from tether.envs.tool_calls import ToolCall, format_tool_call, parse_tool_calls
from tether.errors import ConfigError


def test_tool_calls_are_parsed_from_the_json_form():
    text = ("I will look. <tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.txt\"}}\n</tool_call>"
            "<tool_call>{\"name\": \"list_files\"}</tool_call> <tool_call>{broken json")
    assert parse_tool_calls(text) == [ToolCall("read_file", {"path": "a.txt"}), ToolCall("list_files", {}),
                                      ToolCall("invalid", {"text": "{broken json"})]
    assert parse_tool_calls("The answer is 4.") == []
    expected = [ToolCall("calculator", {"expression": "2+2"})]
    assert parse_tool_calls(format_tool_call("calculator", expression="2+2")) == expected


def test_arithmetic_episode_with_the_calculator_in_the_sandbox():
    env = make_env("arithmetic")
    messages = env.reset({"prompt": "What is 17 * 23?", "answer": "391"})
    assert "calculator" in messages[0]["content"] and messages[-1]["content"] == "What is 17 * 23?"
    first = env.step("Let me compute. " + format_tool_call("calculator", expression="17 * 23"))
    assert not first.done and first.reward == 0.0
    assert first.observation == {"role": "tool", "content": "<tool_response>\n391\n</tool_response>"}
    last = env.step("<answer>391</answer>")
    assert last.done and last.reward == 1.0
    env.reset({"prompt": "What is 17 * 23?", "answer": "391"})
    assert env.step("<answer>390</answer>").reward == 0.0  # no tool: one turn, scored


def test_tool_errors_are_shown_not_raised_and_limits_end_the_episode():
    env = make_env("arithmetic", max_turns=2, max_tool_calls=8)
    env.reset({"prompt": "What is 2 + 2?", "answer": "4"})
    result = env.step(format_tool_call("rm_rf") + format_tool_call("calculator", wrong=1))
    assert "unknown tool 'rm_rf'" in result.observation["content"]
    assert "unexpected keyword argument" in result.observation["content"]
    result = env.step(format_tool_call("calculator", expression="0 + 4"))  # second turn: the limit
    # ends on a tool call: no answer was given, though the call's text ends in the right number
    assert result.done and result.info["truncated"] and result.reward == 0.0
    env = make_env("arithmetic", max_turns=5, max_tool_calls=1)
    env.reset({"prompt": "What is 2 + 2?", "answer": "4"})
    result = env.step(format_tool_call("calculator", expression="1") + format_tool_call("calculator", expression="2"))
    assert result.done and env.calls == 1


def test_file_tree_runs_code_in_the_sandbox_and_keeps_its_changes():
    tree = FileTree({"data/a.txt": "1\n2\n"})
    output = tree.run_python("import os\nprint(open('data/a.txt').read().count('\\n'))\n"
                             "open('out.txt', 'w').write('hi')\nos.remove('data/a.txt')\n"
                             "open('/tmp/tether-envs-marker', 'w').write('x')")  # a tmpfs of the sandbox's own
    assert output.splitlines() == ["[ok]", "2"]
    assert not os.path.exists("/tmp/tether-envs-marker")
    assert tree.files == {"out.txt": "hi"}
    failed = tree.run_python("open('x', 'w').write('kept')\nraise SystemExit(3)")
    assert failed.startswith("[error]") and tree.files["x"] == "kept"
    assert clean_path("../etc/passwd") is None and clean_path("/a/./b") == "a/b"
    assert tree.write_file("../../escape", "x").startswith("error") and "escape" not in str(tree.files)


@pytest.mark.parametrize("seed", [0, 1])
def test_environments_are_deterministic_under_a_seed(seed):
    def episode(env_seed, task_seed):
        env = make_env("file_count", seed=env_seed)
        messages = env.reset({"seed": task_seed})
        code = "import glob\nprint(sorted(open(p).read() for p in glob.glob('logs/*')))"
        out = env.step(format_tool_call("run_python", code=code)).observation
        done = env.step("done")
        return messages, dict(env.tree.files), out, env.count, done.reward

    assert episode(seed, 5) == episode(seed, 5)
    assert episode(seed, 5)[1] != episode(seed + 1, 5)[1]  # another seed, other files
    assert episode(seed, 5)[1] != episode(seed, 6)[1]


def test_file_count_reward_needs_the_right_count_and_untouched_logs():
    env = make_env("file_count")
    env.reset({"seed": 2})
    env.step(format_tool_call("write_file", path="answer.txt", content=str(env.count)))
    assert env.step("done").reward == 1.0
    env.reset({"seed": 2})
    env.step(format_tool_call("write_file", path="answer.txt", content=str(env.count + 1)))
    assert env.step("done").reward == 0.0
    env.reset({"seed": 2})
    env.step(format_tool_call("write_file", path="answer.txt", content=str(env.count)) +
             format_tool_call("delete_file", path="logs/app0.log"))
    assert env.step("done").reward == 0.0


def test_unknown_environment_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown environment"):
        make_env("nope")
    assert isinstance(make_env("test_agents_env:Echo"), Environment)


class Echo(Environment):
    """Answers every turn with a tool message, until the turn limit (for rollout tests)."""

    name = "echo"

    def start(self, task):
        return [{"role": "user", "content": str(task["prompt"])}]

    def step(self, action):
        self.turns += 1
        from tether.envs.base import StepResult

        if self.turns >= self.max_turns:
            return StepResult(None, float(len(action) % 3), True)
        self.calls += 1
        return StepResult({"role": "tool", "content": f"echo {self.turns}: {action[:5]}"}, 0.0, False)


def test_sft_on_a_tool_episode_learns_the_model_turns_only(tmp_path):
    import json

    from tether.data import load_records
    from tether.data.tokenize import encode_sft
    from tether.envs.arithmetic import tool_warmup_messages
    from tether.models import load_tokenizer
    from tether.models.tiny import save_tiny_llama

    save_tiny_llama(tmp_path / "model")
    tokenizer = load_tokenizer(tmp_path / "model")
    messages = tool_warmup_messages({"prompt": [{"role": "user", "content": "What is 9 + 13?"}], "answer": "22"})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    (tmp_path / "sft.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    record = load_records(tmp_path / "sft.jsonl", "sft")[0]  # "tool" is a valid role
    encoded = encode_sft(record, tokenizer, 1024)
    learned = tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100])
    assert learned == messages[2]["content"] + "<|im_end|>" + "<answer>22</answer><|im_end|>"
