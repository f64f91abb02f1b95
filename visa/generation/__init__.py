"""Text and vision-language generation. A generator is a class with this interface, instantiated from
`conf/question_llm/`, `conf/answer_mllm/` or `conf/describer/`:

    identity() -> dict                      # model id, dtype, generation parameters: all that changes outputs
    generate(list[Prompt]) -> list[str]     # one reply per prompt, same order
    batch_size: int
    uses_context: bool                      # True for text-only answerers that read Prompt.context
                                            # (the item's description) instead of the pixels

Constructors only store settings; weights load on first use, so a fully cached run loads no model.
"""
