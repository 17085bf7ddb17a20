"""The WordNet hierarchy behind ImageNet: generated from WordNet's own file format, used to expand labels and to
tell which classes a label set covers."""
import json

import pytest

from labels.build_hierarchy import build_hierarchy, parse_wordnet_nouns
from testbed.devsets import imagenet_coarse_label
from transforms.backends.imagenet_hierarchy import ImageNetHierarchy, imagenet_hierarchy
from transforms.label_sets import load_label_set

# A few real lines of WordNet 3.0's data.noun, shortened to the fields the parser reads; the licence header of
# the real file starts with two spaces, like the first line here.
WORDNET_SAMPLE = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton University
00001740 03 n 01 entity 0 001 ~ 00001930 n 0000 | that which is perceived
00001930 03 n 01 physical_entity 0 001 @ 00001740 n 0000 | an entity that has physical existence
00002684 03 n 02 object 0 physical_object 0 001 @ 00001930 n 0000 | a tangible and visible entity
00003553 03 n 02 whole 0 unit 0 001 @ 00002684 n 0000 | an assemblage of parts
00004258 03 n 02 living_thing 0 animate_thing 0 001 @ 00003553 n 0000 | a living (or once living) entity
00004475 03 n 02 organism 0 being 0 001 @ 00004258 n 0000 | a living thing
00015388 05 n 04 animal 0 animate_being 0 beast 0 brute 0 001 @ 00004475 n 0000 | a living organism
01466257 05 n 02 chordate 0 chordates 0 001 @ 00015388 n 0000 | any animal of the phylum Chordata
01471682 05 n 02 vertebrate 0 craniate 0 001 @ 01466257 n 0000 | animals having a bony spinal column
01861778 05 n 02 mammal 0 mammalian 0 001 @ 01471682 n 0000 | any warm-blooded vertebrate
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 01861778 n 0000 ~ 02099601 n 0000 | a dog
02099601 05 n 02 golden_retriever 0 golden 1 001 @ 02084071 n 0000 | an English breed
02121620 05 n 02 cat 0 true_cat 0 001 @ 01861778 n 0000 | feline mammal
02123045 05 n 02 tabby 0 tabby_cat 0 001 @ 02121620 n 0000 | a cat with a grey or tawny coat
09999999 05 n 01 unrelated_thing 0 000 | not above any class
"""


@pytest.fixture
def sample_hierarchy():
    synsets = parse_wordnet_nouns(WORDNET_SAMPLE.splitlines())
    return build_hierarchy(["n02099601", "n02123045"], synsets, "test sample")


def test_wordnet_lines_become_lemmas_and_hypernyms():
    synsets = parse_wordnet_nouns(WORDNET_SAMPLE.splitlines())
    assert synsets["n02084071"] == {"lemmas": ["dog", "domestic dog", "Canis familiaris"], "hypernyms": ["n01861778"]}
    assert synsets["n00001740"]["hypernyms"] == []  # `~` (hyponym) pointers are not parents
    assert len(synsets) == 15  # the licence line is skipped


def test_generated_file_keeps_the_classes_and_every_ancestor_only(sample_hierarchy):
    assert sample_hierarchy["classes"] == ["n02099601", "n02123045"]
    assert "n09999999" not in sample_hierarchy["synsets"]  # only synsets above a class are kept
    assert {"n02084071", "n02121620", "n01861778", "n00001740"} <= set(sample_hierarchy["synsets"])
    with pytest.raises(ValueError, match="not WordNet 3.0 nouns"):
        build_hierarchy(["n12345678"], parse_wordnet_nouns(WORDNET_SAMPLE.splitlines()), "")


def test_chains_skip_the_top_of_the_tree_and_concepts_cover_their_classes(sample_hierarchy):
    hierarchy = ImageNetHierarchy.from_json(json.dumps(sample_hierarchy))
    # entity, physical entity, object, whole, living thing are the uninformative top (depth < 5)
    assert hierarchy.chain(0) == ["dog", "mammal", "vertebrate", "chordate", "animal", "organism"]
    assert hierarchy.chain(1, length=2) == ["cat", "mammal"]
    assert hierarchy.concept_classes("mammals") == [0, 1]  # plurals are found too
    assert hierarchy.concept_classes("Dog") == [0]
    assert hierarchy.concept_classes("golden retriever") == [0]  # a class covers itself
    assert hierarchy.concept_classes("spaceship") == []


def test_the_packaged_hierarchy_matches_the_imagenet_label_file():
    hierarchy = imagenet_hierarchy()
    names = load_label_set("imagenet")
    assert len(hierarchy.class_ids) == len(names) == 1000
    golden = names.index("Golden Retriever")
    assert {"dog", "mammal"} <= set(hierarchy.chain(golden))
    instruments = {names[i] for i in hierarchy.concept_classes("musical instruments")}
    assert {"acoustic guitar", "cello", "grand piano"} <= instruments and "Golden Retriever" not in instruments


def test_imagenet_classes_get_the_most_specific_coarse_concept():
    names = load_label_set("imagenet")
    coarse = {name: imagenet_coarse_label(names.index(name))
              for name in ("tench", "Golden Retriever", "acoustic guitar", "Granny Smith apple", "airliner",
                           "sports car", "volcano")}
    assert coarse == {"tench": "fish", "Golden Retriever": "mammal", "acoustic guitar": "musical instrument",
                      "Granny Smith apple": "fruit", "airliner": "aircraft", "sports car": "vehicle",
                      "volcano": None}


def test_a_label_finds_its_classes_by_every_name_it_gives():
    """A small synthetic WordNet: two senses of "food", a drink, an apple cultivar, a class WordNet has no name for."""
    synsets = {
        "top": {"lemmas": ["entity"], "hypernyms": []},
        "nutrient": {"lemmas": ["food", "nutrient"], "hypernyms": ["top"]},
        "solid_food": {"lemmas": ["food", "solid food"], "hypernyms": ["top"]},
        "pizza": {"lemmas": ["pizza", "pizza pie"], "hypernyms": ["nutrient"]},
        "apple": {"lemmas": ["apple"], "hypernyms": ["solid_food"]},
        "granny": {"lemmas": ["Granny Smith"], "hypernyms": ["apple"]},
        "beverage": {"lemmas": ["beverage", "drink"], "hypernyms": ["top"]},
        "espresso": {"lemmas": ["espresso"], "hypernyms": ["beverage"]},
        "instrument": {"lemmas": ["musical instrument"], "hypernyms": ["top"]},
        "guitar": {"lemmas": ["guitar"], "hypernyms": ["instrument"]},
    }
    hierarchy = ImageNetHierarchy(["pizza", "granny", "espresso", "guitar"], synsets,
                                  ["pizza", "Granny Smith", "espresso", "six-string guitar"])
    assert hierarchy.concept_classes("food") == [0, 1]  # both senses: pizza is nutrient, an apple solid food
    assert hierarchy.concept_classes("food and drink") == [0, 1, 2]  # each part of a phrase
    assert hierarchy.concept_classes("pizza or espresso") == [0, 2]
    assert hierarchy.concept_classes("Drinks") == [2]  # plurals, any case
    assert hierarchy.concept_classes("musical   instruments") == [3]  # multi-word names, spacing
    assert hierarchy.concept_classes("Granny Smith apple") == [1]  # "A B": A, a kind of B
    assert hierarchy.concept_classes("Granny Smith pizza") == []  # ... not when A is no kind of B
    assert hierarchy.concept_classes("six-string guitar") == [3]  # a class's own name, though WordNet lacks it
    assert hierarchy.concept_classes("outer space") == []


def test_the_packaged_hierarchy_maps_the_labels_users_write():
    hierarchy, names = imagenet_hierarchy(), load_label_set("imagenet")
    food_and_drink = {names[i] for i in hierarchy.concept_classes("food and drink")}
    assert {"espresso", "pizza", "Granny Smith apple", "banana"} <= food_and_drink
    assert "Golden Retriever" not in food_and_drink
    assert all(i in hierarchy.concept_classes(name) for i, name in enumerate(names))  # each class by its own name
    assert {names[i] for i in hierarchy.concept_classes("sports equipment")} >= {"basketball", "dumbbell"}
