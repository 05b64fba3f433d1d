import Testing
@testable import VMM

/// A device that remembers what it was asked, and answers reads with the offset.
final class RecordingDevice: BusDevice {
    var writes: [(offset: UInt64, size: Int, value: UInt64)] = []
    var reads: [(offset: UInt64, size: Int)] = []

    func read(offset: UInt64, size: Int) -> UInt64 {
        reads.append((offset, size))
        return 0x100 + offset
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        writes.append((offset, size, value))
    }
}

struct BusTests {
    @Test func overlappingRangesAreRejectedNamingBothDevices() throws {
        let bus = Bus()
        try bus.register(RecordingDevice(), at: 0x3f8, size: 8, name: "COM1")
        for (base, size) in [(0x3f8, 1), (0x3f0, 9), (0x3ff, 4), (0x3f0, 0x20), (0x3fa, 2)] as [(UInt64, UInt64)] {
            #expect(throws: BusError.overlap(name: "other", range: base...(base + size - 1), existing: "COM1", existingRange: 0x3f8...0x3ff)) {
                try bus.register(RecordingDevice(), at: base, size: size, name: "other")
            }
        }
        // Adjacent on both sides is fine.
        try bus.register(RecordingDevice(), at: 0x3f0, size: 8, name: "below")
        try bus.register(RecordingDevice(), at: 0x400, size: 1, name: "above")
        #expect(bus.ranges.map(\.name) == ["below", "COM1", "above"])
        let error = #expect(throws: BusError.self) { try bus.register(RecordingDevice(), at: 0x3fc, size: 8, name: "late") }
        #expect(error?.description == "late at 0x3fc-0x403 overlaps COM1 at 0x3f8-0x3ff: give one of them another address")
    }

    @Test func emptyAndWrappingRangesAreRejected() {
        let bus = Bus()
        #expect(throws: BusError.badRange(name: "empty", base: 0x10, size: 0)) {
            try bus.register(RecordingDevice(), at: 0x10, size: 0, name: "empty")
        }
        #expect(throws: BusError.badRange(name: "wrap", base: UInt64.max, size: 2)) {
            try bus.register(RecordingDevice(), at: UInt64.max, size: 2, name: "wrap")
        }
    }

    @Test func lookupsFindTheDeviceAndTheOffsetInIt() throws {
        let bus = Bus()
        let devices = (0..<20).map { _ in RecordingDevice() }
        // Registered out of order: the bus keeps them sorted.
        for index in [7, 3, 19, 0, 12, 5, 1, 18, 2, 4, 6, 8, 9, 10, 11, 13, 14, 15, 16, 17] {
            try bus.register(devices[index], at: UInt64(index) * 0x10, size: 8, name: "d\(index)")
        }
        for index in 0..<20 {
            let base = UInt64(index) * 0x10
            let found = try #require(bus.device(at: base + 5))
            #expect(found.device === devices[index])
            #expect(found.offset == 5)
            #expect(found.name == "d\(index)")
            #expect(bus.device(at: base + 8) == nil)  // the gap after each device
        }
        #expect(bus.read(0x75, size: 2) == 0x105)
        bus.write(0x31, size: 4, value: 0xdead_beef)
        #expect(devices[7].reads.map(\.offset) == [5])
        #expect(devices[3].writes.map(\.offset) == [1])
        #expect(devices[3].writes.map(\.value) == [0xdead_beef])
        #expect(devices[3].writes.map(\.size) == [4])
    }

    @Test func unknownAddressesReadAllOnesAndIgnoreWrites() throws {
        let bus = Bus()
        let device = RecordingDevice()
        try bus.register(device, at: 0x60, size: 1, name: "data")
        #expect(bus.read(0x61, size: 1) == 0xff)
        #expect(bus.read(0x2f8, size: 2) == 0xffff)
        #expect(bus.read(0x2f8, size: 4) == 0xffff_ffff)
        #expect(bus.read(0xfee0_0000, size: 8) == UInt64.max)
        bus.write(0x61, size: 1, value: 0)
        #expect(device.writes.isEmpty && device.reads.isEmpty)
    }

    @Test func theTraceHookSeesEveryAccessWithTheDeviceName() throws {
        let bus = Bus()
        try bus.register(RecordingDevice(), at: 0x70, size: 2, name: "RTC")
        var seen: [BusAccess] = []
        bus.trace = { seen.append($0) }
        bus.write(0x70, size: 1, value: 0x0a)
        _ = bus.read(0x71, size: 1)
        _ = bus.read(0x80, size: 1)
        #expect(seen == [
            BusAccess(address: 0x70, size: 1, isWrite: true, value: 0x0a, device: "RTC"),
            BusAccess(address: 0x71, size: 1, isWrite: false, value: 0x101, device: "RTC"),
            BusAccess(address: 0x80, size: 1, isWrite: false, value: 0xff, device: nil),
        ])
    }

    @Test func byteRegisterDevicesSplitWideAccessesLowByteFirst() {
        var registers = [UInt8](repeating: 0, count: 8)
        var order: [Int] = []
        let device = ByteRegisterDevice(read: { registers[$0] }, write: { order.append($0); registers[$0] = $1 })
        device.write(offset: 2, size: 4, value: 0x4433_2211)
        #expect(registers == [0, 0, 0x11, 0x22, 0x33, 0x44, 0, 0])
        #expect(order == [2, 3, 4, 5])
        #expect(device.read(offset: 3, size: 2) == 0x3322)
    }
}
