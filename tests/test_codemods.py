"""Each codemod on a small source: exact output, and refusal when its place is missing or doubled."""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodTest

from patcher.codemods import (
    AddMethodsCommand,
    InsertAtMethodStartCommand,
    InsertBeforeGenerationLoopCommand,
    InsertImportsCommand,
    PrependToMethodsCommand,
    TimeForwardCallCommand,
)
from patcher.errors import UnexpectedCode

GREEDY_SNIPPET = cst.parse_module(
    '''
"""Snippet docstring, never copied."""


def before_loop(self, input_ids, method_name):
    # compile first
    self = compile_model(self, input_ids, method_name)


def before_forward(timer):
    timer.start()


def after_forward(timer, model_inputs):
    timer.stop(model_inputs)


def after_loop(timer):
    timer.write()
'''
)

GREEDY_SEARCH = """
class GenerationMixin:
    def greedy_search(self, input_ids):
        done = False
        while True:
            model_inputs = prepare(input_ids)

            # forward pass
            outputs = self(**model_inputs)

            if done:
                break

        return outputs

    def sample(self):
        while True:
            outputs = self()
"""


class TestInsertBeforeGenerationLoop(CodemodTest):
    TRANSFORM = InsertBeforeGenerationLoopCommand

    def test_inserts_before_the_top_level_loop_of_greedy_search_only(self) -> None:
        after = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                done = False
                # compile first
                self = compile_model(self, input_ids, "greedy_search")
                while True:
                    model_inputs = prepare(input_ids)

                    # forward pass
                    outputs = self(**model_inputs)

                    if done:
                        break

                return outputs

            def sample(self):
                while True:
                    outputs = self()
        """
        self.assertCodemod(GREEDY_SEARCH, after, GREEDY_SNIPPET, ["greedy_search"])

    def test_comments_above_the_loop_stay_above_the_inserted_block(self) -> None:
        before = """
        class GenerationMixin:
            def greedy_search(self, input_ids):

                # generate
                while True:
                    break
        """
        after = """
        class GenerationMixin:
            def greedy_search(self, input_ids):

                # generate
                # compile first
                self = compile_model(self, input_ids, "greedy_search")
                while True:
                    break
        """
        self.assertCodemod(before, after, GREEDY_SNIPPET, ["greedy_search"])

    def test_refuses_without_a_top_level_while_true(self) -> None:
        before = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                if input_ids:
                    while True:
                        break
                while input_ids:
                    break
        """
        with self.assertRaisesRegex(UnexpectedCode, r"_has_unfinished_sequences\(...\)`\) in GenerationMixin.greedy_search not found"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search"])

    def test_refuses_two_loops(self) -> None:
        before = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                while True:
                    break
                while True:
                    break
        """
        with self.assertRaisesRegex(UnexpectedCode, "found 2 times"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search"])

    def test_refuses_greedy_search_outside_generation_mixin(self) -> None:
        before = """
        def greedy_search(self, input_ids):
            while True:
                break

        class Other:
            def greedy_search(self, input_ids):
                while True:
                    break
        """
        with self.assertRaisesRegex(UnexpectedCode, "GenerationMixin.greedy_search not found"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search"])

    def test_refuses_two_greedy_searches(self) -> None:
        before = GREEDY_SEARCH + "\nclass GenerationMixin:\n    def greedy_search(self):\n        while True:\n            break\n"
        with self.assertRaisesRegex(UnexpectedCode, "GenerationMixin.greedy_search found 2 times"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search"])


    def test_edits_every_named_method_with_its_own_name(self) -> None:
        before = """
        class GenerationMixin:
            def sample(self, input_ids):
                while True:
                    outputs = self(input_ids)

            def beam_search(self, input_ids):
                while True:
                    outputs = self(input_ids)

            def contrastive_search(self, input_ids):
                while True:
                    outputs = self(input_ids)
        """
        after = """
        class GenerationMixin:
            def sample(self, input_ids):
                # compile first
                self = compile_model(self, input_ids, "sample")
                while True:
                    outputs = self(input_ids)

            def beam_search(self, input_ids):
                # compile first
                self = compile_model(self, input_ids, "beam_search")
                while True:
                    outputs = self(input_ids)

            def contrastive_search(self, input_ids):
                while True:
                    outputs = self(input_ids)
        """
        self.assertCodemod(before, after, GREEDY_SNIPPET, ["sample", "beam_search"])

    def test_knows_the_loop_of_transformers_4_39_and_later(self) -> None:
        before = """
        class GenerationMixin:
            def _sample(self, input_ids):
                while self._has_unfinished_sequences(this_peer_finished, synced_gpus, device=input_ids.device):
                    outputs = self(input_ids)
        """
        after = """
        class GenerationMixin:
            def _sample(self, input_ids):
                # compile first
                self = compile_model(self, input_ids, "_sample")
                while self._has_unfinished_sequences(this_peer_finished, synced_gpus, device=input_ids.device):
                    outputs = self(input_ids)
        """
        self.assertCodemod(before, after, GREEDY_SNIPPET, ["_sample"])

    def test_a_refusal_names_the_method(self) -> None:
        before = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                while True:
                    outputs = self(input_ids)

            def sample(self, input_ids):
                for step in range(8):
                    outputs = self(input_ids)
        """
        with self.assertRaisesRegex(UnexpectedCode, r"generation loop .* in GenerationMixin.sample not found"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search", "sample"])
        with self.assertRaisesRegex(UnexpectedCode, "GenerationMixin.beam_search not found"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search", "beam_search"])


class TestTimeForwardCall(CodemodTest):
    TRANSFORM = TimeForwardCallCommand

    def test_times_the_forward_call_and_writes_after_the_loop(self) -> None:
        after = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                done = False
                while True:
                    model_inputs = prepare(input_ids)

                    # forward pass
                    timer.start()
                    outputs = self(**model_inputs)
                    timer.stop(model_inputs)

                    if done:
                        break
                timer.write()

                return outputs

            def sample(self):
                while True:
                    outputs = self()
        """
        self.assertCodemod(GREEDY_SEARCH, after, GREEDY_SNIPPET, ["greedy_search"])

    def test_times_the_if_else_that_holds_the_call(self) -> None:
        """transformers 4.38+ beam search: one call, or calls on sub-batches (low_memory)."""
        before = """
        class GenerationMixin:
            def _beam_search(self, input_ids):
                while self._has_unfinished_sequences(this_peer_finished, synced_gpus):
                    if sequential:
                        outputs = stack([self(batch) for batch in split(input_ids)])
                    else:  # unchanged
                        outputs = self(input_ids)
                    step()
        """
        after = """
        class GenerationMixin:
            def _beam_search(self, input_ids):
                while self._has_unfinished_sequences(this_peer_finished, synced_gpus):
                    timer.start()
                    if sequential:
                        outputs = stack([self(batch) for batch in split(input_ids)])
                    else:  # unchanged
                        outputs = self(input_ids)
                    timer.stop(model_inputs)
                    step()
                timer.write()
        """
        self.assertCodemod(before, after, GREEDY_SNIPPET, ["_beam_search"])

    def test_refuses_when_the_call_is_missing(self) -> None:
        before = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                while True:
                    for batch in input_ids:
                        outputs = self(batch)
                    result = self(input_ids)
        """
        with self.assertRaisesRegex(UnexpectedCode, r"`outputs = self\(...\)` .* not found"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search"])

    def test_refuses_when_the_call_is_doubled(self) -> None:
        before = """
        class GenerationMixin:
            def greedy_search(self, input_ids):
                while True:
                    outputs = self(input_ids)
                    outputs = self(input_ids, again=True)
        """
        with self.assertRaisesRegex(UnexpectedCode, r"`outputs = self\(...\)` .* found 2 times"):
            self.assertCodemod(before, before, GREEDY_SNIPPET, ["greedy_search"])


IMPORTS = cst.parse_module(
    '''"""Docstring, not copied."""

from . import runtime  # added by the patch
'''
)


class TestInsertImports(CodemodTest):
    TRANSFORM = InsertImportsCommand

    def test_inserts_after_the_last_import_that_opens_the_module(self) -> None:
        before = '''
        """Module docstring."""
        import torch

        from .configuration import Config


        logger = get_logger()
        import late
        '''
        after = '''
        """Module docstring."""
        import torch

        from .configuration import Config
        from . import runtime  # added by the patch


        logger = get_logger()
        import late
        '''
        self.assertCodemod(before, after, IMPORTS)

    def test_refuses_a_module_that_opens_without_imports(self) -> None:
        before = """
        logger = get_logger()
        import torch
        """
        with self.assertRaisesRegex(UnexpectedCode, "no import statements at its top"):
            self.assertCodemod(before, before, IMPORTS)

    def test_refuses_a_name_the_module_already_binds(self) -> None:
        for before in ("import torch\nfrom .other import runtime\n", "import torch\n\ndef runtime():\n    pass\n"):
            with self.assertRaisesRegex(UnexpectedCode, "already binds runtime"):
                self.assertCodemod(before, before, IMPORTS)


CLASS_SNIPPET = cst.parse_module(
    '''
class Attention:
    def forward(self, hidden, cache=None):
        # dispatch
        if is_static(cache):
            return static_forward(self, hidden, cache)

    def llama_graph_patch_allocate(self, size):
        """New method."""
        return allocate(size)
'''
)


class TestPrependToMethods(CodemodTest):
    TRANSFORM = PrependToMethodsCommand

    def test_inserts_after_the_docstring(self) -> None:
        before = '''
        class Attention(Module):
            def forward(self, hidden: Tensor, cache: Optional[Tuple] = None) -> Tensor:
                """Attend."""
                return hidden
        '''
        after = '''
        class Attention(Module):
            def forward(self, hidden: Tensor, cache: Optional[Tuple] = None) -> Tensor:
                """Attend."""
                # dispatch
                if is_static(cache):
                    return static_forward(self, hidden, cache)
                return hidden
        '''
        self.assertCodemod(before, after, CLASS_SNIPPET)

    def test_refuses_other_parameter_names(self) -> None:
        before = """
        class Attention(Module):
            def forward(self, hidden, past=None):
                return hidden
        """
        with self.assertRaisesRegex(UnexpectedCode, r"Attention.forward with parameters \(self, hidden, cache\)"):
            self.assertCodemod(before, before, CLASS_SNIPPET)

    def test_refuses_a_missing_method(self) -> None:
        before = """
        class Attention(Module):
            def backward(self, hidden, cache=None):
                return hidden
        """
        with self.assertRaisesRegex(UnexpectedCode, "Attention.forward not found"):
            self.assertCodemod(before, before, CLASS_SNIPPET)


class TestAddMethods(CodemodTest):
    TRANSFORM = AddMethodsCommand

    def test_appends_new_methods_to_the_class(self) -> None:
        before = """
        class Attention(Module):
            def forward(self, hidden, cache=None):
                return hidden

        class Other:
            pass
        """
        after = '''
        class Attention(Module):
            def forward(self, hidden, cache=None):
                return hidden

            def llama_graph_patch_allocate(self, size):
                """New method."""
                return allocate(size)

        class Other:
            pass
        '''
        self.assertCodemod(before, after, CLASS_SNIPPET)

    def test_refuses_an_existing_member(self) -> None:
        before = """
        class Attention(Module):
            def llama_graph_patch_allocate(self, size):
                pass
        """
        with self.assertRaisesRegex(UnexpectedCode, "without a member llama_graph_patch_allocate"):
            self.assertCodemod(before, before, CLASS_SNIPPET)

    def test_refuses_a_missing_class(self) -> None:
        with self.assertRaisesRegex(UnexpectedCode, "class Attention not found"):
            self.assertCodemod("x = 1\n", "x = 1\n", CLASS_SNIPPET)


AT_START_SNIPPET = cst.parse_module(
    '''
def at_start(self, method_name):
    # say so
    say_eager(self, method_name)
'''
)


class TestInsertAtMethodStart(CodemodTest):
    TRANSFORM = InsertAtMethodStartCommand

    def test_inserts_after_the_docstring_of_each_named_method(self) -> None:
        before = '''
        class GenerationMixin:
            def contrastive_search(self, input_ids):
                r"""Generates with contrastive search."""
                # init values
                top_k = 4

            def assisted_decoding(self, input_ids):
                return input_ids

            def sample(self, input_ids):
                return input_ids
        '''
        after = '''
        class GenerationMixin:
            def contrastive_search(self, input_ids):
                r"""Generates with contrastive search."""
                # say so
                say_eager(self, "contrastive_search")
                # init values
                top_k = 4

            def assisted_decoding(self, input_ids):
                # say so
                say_eager(self, "assisted_decoding")
                return input_ids

            def sample(self, input_ids):
                return input_ids
        '''
        self.assertCodemod(before, after, AT_START_SNIPPET, ["contrastive_search", "assisted_decoding"])

    def test_refuses_a_missing_method(self) -> None:
        before = """
        class GenerationMixin:
            def sample(self, input_ids):
                return input_ids
        """
        with self.assertRaisesRegex(UnexpectedCode, "GenerationMixin.assisted_decoding not found"):
            self.assertCodemod(before, before, AT_START_SNIPPET, ["assisted_decoding"])
