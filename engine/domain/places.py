"""Where a location is, in words a network selects by: its country (ISO 3166-1 alpha-2) and
a region tag of the retailer's own. Pure: no I/O."""

from __future__ import annotations

from engine.domain.errors import InvalidArgument

# ISO 3166-1 alpha-2: every officially assigned code (249, as of the 2024 edition). "UK" is
# not one of them (only reserved): the United Kingdom is "GB".
_ALPHA_2 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
    BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
    DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
    GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
    KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
    MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
    PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
    SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
    US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
COUNTRIES = frozenset(_ALPHA_2.split())


def check_country(value: str, field_name: str) -> str:
    """An ISO 3166-1 alpha-2 code in upper case ("GB"), else INVALID_ARGUMENT; the caller
    decides whether an empty one may stand for "not said"."""
    if value not in COUNTRIES:
        hint = ' (the United Kingdom is "GB")' if value.upper() == "UK" else ""
        raise InvalidArgument(
            field_name,
            f"must be an ISO 3166-1 alpha-2 country code in upper case{hint}, got {value!r}",
        )
    return value
