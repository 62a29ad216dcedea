"""The real class names the rehearsal roots of the paper's ID sets use (``rehearsal_id``): the
first ten (sorted) of each set, or the whole fixed list where the loader takes it from one.

Data apart from the writers, so each writer reads as the format it reproduces.
"""

from __future__ import annotations

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_NAMES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm".split()
)
CIFAR100_COARSE = tuple(
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals "
    "trees vehicles_1 vehicles_2".split()
)
STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
CALTECH_NAMES = (
    "Faces",
    "Faces_easy",
    "Leopards",
    "Motorbikes",
    "accordion",
    "airplanes",
    "anchor",
    "ant",
    "barrel",
    "bass",
)
DTD_NAMES = (
    "banded",
    "blotchy",
    "braided",
    "bubbly",
    "bumpy",
    "chequered",
    "cobwebbed",
    "cracked",
    "crosshatched",
    "crystalline",
)
EUROSAT_NAMES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
AIRCRAFT_NAMES = (
    "707-320",
    "727-200",
    "737-200",
    "737-300",
    "737-400",
    "737-500",
    "737-600",
    "737-700",
    "737-800",
    "737-900",
)
FOOD_NAMES = (
    "apple_pie",
    "baby_back_ribs",
    "baklava",
    "beef_carpaccio",
    "beef_tartare",
    "beet_salad",
    "beignets",
    "bibimbap",
    "bread_pudding",
    "breakfast_burrito",
)
#: (breed as in the file names, species: 1 cat / 2 dog, breed id within its species)
PET_BREEDS = (
    ("Abyssinian", 1, 1),
    ("american_bulldog", 2, 1),
    ("american_pit_bull_terrier", 2, 2),
    ("basset_hound", 2, 3),
    ("beagle", 2, 4),
    ("Bengal", 1, 2),
    ("Birman", 1, 3),
    ("Bombay", 1, 4),
    ("boxer", 2, 5),
    ("British_Shorthair", 1, 5),
)
CAR_NAMES = (
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Acura TL Sedan 2012",
    "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012",
    "Acura Integra Type R 2001",
    "Acura ZDX Hatchback 2012",
    "Aston Martin V8 Vantage Convertible 2012",
    "Aston Martin V8 Vantage Coupe 2012",
    "Aston Martin Virage Convertible 2012",
)
COUNTRY_CODES = ("AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR")
