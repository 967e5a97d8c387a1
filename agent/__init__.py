"""mclz-agent: the edge agent of a city's Internet + Bright Kitchen platform for school canteens."""

__version__ = "0.2.0"
