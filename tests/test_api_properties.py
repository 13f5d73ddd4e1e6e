"""Property-based: the page parser yields valid stations or our ParseError, nothing else."""

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.errors import ParseError
from exporter.model import Station
from exporter.stations import parse_page

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
ATTRIBUTE_NAMES = ["label", "chargeBoxIdentity", "firmwareVersion", "serialnumber", "iccid", "imsi"]
rows = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values,
        "id": st.text(max_size=10) | st.integers() | json_values,
        "attributes": st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), json_values) | json_values,
    },
)
pages = st.fixed_dictionaries(
    {},
    optional={
        "data": st.lists(rows, max_size=5) | json_values,
        "meta": st.fixed_dictionaries({}, optional={"pagination": json_values}) | json_values,
        "links": json_values,
    },
)


def check(document: object) -> None:
    try:
        stations, pagination = parse_page(document)
    except ParseError:
        return
    assert isinstance(pagination, dict)
    for station in stations:
        assert isinstance(station, Station)
        assert isinstance(station.id, str) and station.id
        for text in (station.label, station.charge_box_identity, station.serial_number):
            assert isinstance(text, str)
        assert isinstance(station.firmware_label, str) and station.firmware_label


@settings(max_examples=300, deadline=None)
@given(pages)
def test_page_shaped_documents(document):
    check(document)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_document(document):
    check(document)
