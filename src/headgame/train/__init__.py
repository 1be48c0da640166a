
from headgame.runs import make_callable

make_callable(__name__)  # headgame.train(...) runs the command (headgame.api)
