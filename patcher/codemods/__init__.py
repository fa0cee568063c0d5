"""One codemod per kind of change, each a libcst codemod command; patches/ says which runs where."""

from patcher.codemods.add_methods import AddMethodsCommand
from patcher.codemods.insert_at_method_start import InsertAtMethodStartCommand
from patcher.codemods.insert_before_generation_loop import InsertBeforeGenerationLoopCommand
from patcher.codemods.insert_imports import InsertImportsCommand
from patcher.codemods.prepend_to_methods import PrependToMethodsCommand
from patcher.codemods.time_forward_call import TimeForwardCallCommand

# The names patches/__init__.py uses for them.
COMMANDS = {
    "insert-imports": InsertImportsCommand,
    "insert-before-generation-loop": InsertBeforeGenerationLoopCommand,
    "time-forward-call": TimeForwardCallCommand,
    "insert-at-method-start": InsertAtMethodStartCommand,
    "prepend-to-methods": PrependToMethodsCommand,
    "add-methods": AddMethodsCommand,
}
