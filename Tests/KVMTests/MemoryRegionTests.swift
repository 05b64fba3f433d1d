import GuestMemory
import Testing
@testable import KVM

@Suite("Memory slots on the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct MemoryRegionTests {
    let vm: VirtualMachine

    init() throws { vm = try HostKVM.hypervisor().createVM() }

    @Test func mappedSlotIsListed() throws {
        let region = try GuestMemoryRegion(size: 0x4000)
        try vm.setMemoryRegion(slot: 2, guestAddress: 0x10000, region: region)
        let slot = try #require(vm.memorySlots.first)
        #expect(slot.slot == 2)
        #expect(slot.guestAddress == 0x10000)
        #expect(slot.size == 0x4000)
        #expect(slot.region === region)
    }

    @Test func misalignedGuestAddressGivesEINVAL() throws {
        let region = try GuestMemoryRegion(size: 0x1000)
        let error = try #require(throws: KVMError.self) {
            try vm.setMemoryRegion(slot: 0, guestAddress: 0x1001, region: region)
        }
        #expect(error.errno == .invalidArgument)
        #expect(vm.memorySlots.isEmpty)
    }

    @Test func sizeNotWholePagesGivesEINVAL() throws {
        let region = try GuestMemoryRegion(size: 0x2000)
        let error = try #require(throws: KVMError.self) {
            try vm.setUserMemoryRegionUnsafe(slot: 0, guestAddress: 0, size: 0x1001, hostAddress: UInt(bitPattern: region.hostAddress))
        }
        #expect(error.errno == .invalidArgument)
    }

    @Test func misalignedHostAddressGivesEINVAL() throws {
        let region = try GuestMemoryRegion(size: 0x2000)
        let error = try #require(throws: KVMError.self) {
            try vm.setUserMemoryRegionUnsafe(slot: 0, guestAddress: 0, size: 0x1000, hostAddress: UInt(bitPattern: region.hostAddress) + 8)
        }
        #expect(error.errno == .invalidArgument)
    }

    @Test func overlappingSlotGivesEEXIST() throws {
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: GuestMemoryRegion(size: 0x10000))
        let error = try #require(throws: KVMError.self) {
            try vm.setMemoryRegion(slot: 1, guestAddress: 0x8000, region: GuestMemoryRegion(size: 0x10000))
        }
        #expect(error.errno == .fileExists)
        #expect(vm.memorySlots.count == 1)
    }

    @Test func movingASlotIsAllowed() throws {
        let region = try GuestMemoryRegion(size: 0x10000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0x100000, region: region)
        #expect(vm.memorySlots.first?.guestAddress == 0x100000)
    }

    @Test func makingASlotReadOnlyGivesEINVAL() throws {
        let region = try GuestMemoryRegion(size: 0x10000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region)
        let error = try #require(throws: KVMError.self) {
            try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region, flags: .readOnly)
        }
        #expect(error.errno == .invalidArgument)
        #expect(vm.memorySlots.first?.flags == [])
    }

    @Test func resizingASlotGivesEINVAL() throws {
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: GuestMemoryRegion(size: 0x10000))
        let error = try #require(throws: KVMError.self) {
            try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: GuestMemoryRegion(size: 0x20000))
        }
        #expect(error.errno == .invalidArgument)
        #expect(vm.memorySlots.first?.size == 0x10000)
    }

    @Test func changingFlagsOfASlotIsAllowed() throws {
        let region = try GuestMemoryRegion(size: 0x10000)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region, flags: .logDirtyPages)
        #expect(vm.memorySlots.first?.flags == .logDirtyPages)
    }

    @Test func unknownFlagGivesEINVAL() throws {
        let region = try GuestMemoryRegion(size: 0x1000)
        let error = try #require(throws: KVMError.self) {
            try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region, flags: MemoryRegionFlags(rawValue: 1 << 7))
        }
        #expect(error.errno == .invalidArgument)
    }

    @Test func slotBeyondTheLimitGivesEINVAL() throws {
        let slots = try vm.hypervisor.checkExtension(.nrMemslots)
        let error = try #require(throws: KVMError.self) {
            try vm.setMemoryRegion(slot: UInt32(slots), guestAddress: 0, region: GuestMemoryRegion(size: 0x1000))
        }
        #expect(error.errno == .invalidArgument)
    }

    @Test func removingASlotGivesTheRegionBack() throws {
        let region = try GuestMemoryRegion(size: 0x10000)
        try vm.setMemoryRegion(slot: 4, guestAddress: 0, region: region)
        let returned = try vm.removeMemoryRegion(slot: 4)
        #expect(returned === region)
        #expect(vm.memorySlots.isEmpty)
        // The range is free again.
        try vm.setMemoryRegion(slot: 5, guestAddress: 0, region: region)
    }

    @Test func dirtyLogOfASlotWithoutLoggingGivesENOENT() throws {
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: GuestMemoryRegion(size: 0x10000))
        let error = try #require(throws: KVMError.self) { try vm.dirtyLog(slot: 0) }
        #expect(error.errno == .noSuchFileOrDirectory)
    }

    @Test func vmKeepsRegionAliveUntilItIsGone() throws {
        weak var weakRegion: GuestMemoryRegion?
        var vm: VirtualMachine? = try HostKVM.hypervisor().createVM()
        do {
            let region = try GuestMemoryRegion(size: 0x1000)
            weakRegion = region
            try vm?.setMemoryRegion(slot: 0, guestAddress: 0, region: region)
        }
        #expect(weakRegion != nil)
        vm = nil
        #expect(weakRegion == nil)
    }
}
