"""A built-in CoLA-style example set, written for this project (no sentence is from CoLA).

One hundred short English sentences in CoLA's lower-cased, space-tokenised style, labelled
1 (acceptable) or 0 (unacceptable): agreement, argument structure, word order, island and
binding violations, determiners and auxiliaries. 60 are acceptable and 40 unacceptable (CoLA itself
is about 70% acceptable). ``TRAIN`` and ``TEST`` are a fixed 70/30 split (every third-and-a-bit
sentence goes to test) for the demo's experiment.
"""

from __future__ import annotations

from .cola import Example

__all__ = ["EXAMPLES", "TRAIN", "TEST", "examples"]

_ACCEPTABLE = """\
the dog chased the ball across the garden .
my sister has lived in this town for ten years .
the children were playing quietly in the hall .
which book did you say that she was reading ?
the letter was written by a farmer from the north .
we expected the train to arrive before noon .
the old man gave his grandson a wooden boat .
it seems that nobody noticed the broken window .
the cake that you baked yesterday tasted wonderful .
she might have been waiting for hours .
the students who passed the exam celebrated together .
there is a cat sleeping on the roof .
he wondered whether the shop would still be open .
the river flooded the fields after the storm .
i asked the teacher where the map was kept .
the soup is too hot to eat .
they painted the fence green last summer .
nobody could explain why the clock had stopped .
the baker sold every loaf before lunch .
both of my brothers enjoy fishing .
the more you practise , the easier it becomes .
she told me that the meeting had been cancelled .
the keys were found under the sofa .
the pilot landed the plane safely .
john seems to like his new job .
the girl whose bicycle was stolen went to the police .
how many apples did the farmer pick ?
we watched the sun set over the hills .
the committee has approved the plan .
it is easy to please the baby .
the milk went sour in the heat .
the doctor advised him to rest for a week .
a strange noise woke everyone up .
the books on the shelf belong to my aunt .
she sang while he played the piano .
whoever finishes first can leave early .
the ship sank in calm water .
mary persuaded the boys to clean their room .
the tea was cold by the time she drank it .
we had hardly sat down when the phone rang .
the museum opens at nine every morning .
that he lied surprised nobody .
the horse jumped over the fence .
the neighbours complained about the noise .
i believe the story to be true .
the snow melted quickly in the spring sun .
he put the vase on the table .
they elected her captain of the team .
the boy who the dog bit cried all night .
the ice cracked under his weight .
what did the child draw on the wall ?
the manager sent the workers home early .
she is taller than her mother .
the waiter brought us the wrong soup .
it rained all day , so we stayed inside .
the fox ran into the forest .
the painting was sold for a large sum .
our team lost the final match .
the cook cut the bread with a sharp knife .
the birds sang loudly at dawn .
"""

_UNACCEPTABLE = """\
the dog chased .
my sister have lived in this town for ten years .
the children was playing quietly in the hall .
which book did you wonder whether she was reading ?
the letter was wrote by a farmer from the north .
we expected the train arriving to before noon .
the old man gave to his grandson .
it seems nobody to notice the broken window .
the cake that you baked it yesterday tasted wonderful .
she might has been waiting for hours .
the students who passed the exam celebrated themselves each .
there are a cat sleeping on the roof .
he wondered that whether the shop would be open .
the river flooded after the storm the fields the .
i asked the teacher where was the map kept .
the soup is too hot to eat it .
they painted green the fence last summer .
nobody could explain why had the clock stopped .
the baker sold loaf every before lunch .
both of my brother enjoys fishing .
she told me the meeting that had been cancelled .
the keys was found under the sofa .
john seems that likes his new job .
the girl whose bicycle stolen went to the police .
how many did the farmer pick apples ?
herself likes the teacher .
the committee have approved plan the .
the milk went the sour in heat .
the doctor advised to rest him for a week .
a strange noise woke up everyone the .
she sang while he played piano the the .
the ship sank the water calm .
mary persuaded to clean the boys their room .
what did the child draw the picture on the wall ?
the manager sent home early workers the .
she is more taller than her mother .
the fox ran the forest into .
our team losed the final match .
the cook cut with a sharp knife .
the birds sings loudly at dawn .
"""


def _parse(block: str, label: int) -> list[Example]:
  return [Example(line.strip(), label) for line in block.splitlines() if line.strip()]


def _interleave(a: list[Example], b: list[Example]) -> list[Example]:
  """Acceptable and unacceptable sentences mixed in a fixed order (3 : 2)."""
  out, i, j = [], 0, 0
  while i < len(a) or j < len(b):
    for _ in range(3):
      if i < len(a):
        out.append(a[i])
        i += 1
    for _ in range(2):
      if j < len(b):
        out.append(b[j])
        j += 1
  return out


EXAMPLES: tuple[Example, ...] = tuple(
    _interleave(_parse(_ACCEPTABLE, 1), _parse(_UNACCEPTABLE, 0)))
TEST: tuple[Example, ...] = tuple(e for k, e in enumerate(EXAMPLES) if k % 10 in (2, 5, 8))
TRAIN: tuple[Example, ...] = tuple(e for k, e in enumerate(EXAMPLES) if k % 10 not in (2, 5, 8))


def examples(split: str = "all") -> list[Example]:
  """The built-in examples: split "all", "train" or "test"."""
  return list({"all": EXAMPLES, "train": TRAIN, "test": TEST}[split])
