"""The shared bandwidth server and the happens-before race detector."""

from zhenwu.runtime.bandwidth import BandwidthServer
from zhenwu.runtime.races import CoreRaceDetector

S, LD, MX, VX, ST = range(5)


def test_bandwidth_server_never_exceeds_its_rate():
    server = BandwidthServer("HBM", 100.0)
    ends = [server.reserve(0, 1000) for _ in range(10)]
    assert ends == [10.0 * (i + 1) for i in range(10)]
    # an idle gap is not banked
    assert server.reserve(500, 100) == 501.0
    assert server.bytes == 10100


def test_unordered_write_then_read_is_a_race():
    races = CoreRaceDetector(5, ("L1", "ACC"))
    races.tick(LD)
    assert races.access(LD, "L1", 0, 256, True, 3) is None
    races.tick(MX)
    race = races.access(MX, "L1", 128, 512, False, 4)
    assert race is not None
    assert (race.space, race.lo, race.hi, race.other_engine, race.other_address) == (
        "L1", 128, 256, LD, 3)


def test_event_orders_accesses():
    races = CoreRaceDetector(5, ("L1", "ACC"))
    races.tick(LD)
    races.access(LD, "L1", 0, 256, True, 0)
    races.signal(0, 1, races.clocks[LD])
    races.wait(MX, 0, 1)
    races.tick(MX)
    assert races.access(MX, "L1", 0, 256, False, 1) is None
    # VX never synchronised with LD: its read races, its read of another range does not
    races.tick(VX)
    assert races.access(VX, "L1", 512, 600, False, 2) is None
    assert races.access(VX, "L1", 0, 8, False, 2) is not None


def test_reads_do_not_race_and_tokens_are_fifo():
    races = CoreRaceDetector(5, ("L1", "ACC"))
    races.tick(LD)
    races.access(LD, "L1", 0, 64, False, 0)
    races.tick(MX)
    assert races.access(MX, "L1", 0, 64, False, 1) is None
    # two signals on E1: the first wait of 1 joins only the first signaller
    races.tick(VX)
    races.signal(1, 1, races.clocks[VX])
    races.tick(ST)
    races.access(ST, "ACC", 0, 64, True, 2)
    races.signal(1, 1, races.clocks[ST])
    races.wait(MX, 1, 1)
    races.tick(MX)
    assert races.access(MX, "ACC", 0, 64, False, 3) is not None
    races.wait(MX, 1, 1)
    races.tick(MX)
    assert races.access(MX, "ACC", 0, 64, False, 4) is None
