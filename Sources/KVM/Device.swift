import CLinuxKVM

/// A device type of KVM_CREATE_DEVICE (`enum kvm_device_type`).
public struct DeviceType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The kvm-vfio pseudo-device, which tells KVM which VFIO files the VM's
    /// devices come from (x86's one device type).
    public static let vfio = DeviceType(rawValue: UInt32(KVM_DEV_TYPE_VFIO.rawValue))

    public var description: String {
        self == .vfio ? "KVM_DEV_TYPE_VFIO" : "device type \(rawValue)"
    }
}

/// An attribute of a device: group, attribute and the user address its
/// value lives at (`struct kvm_device_attr`).
public struct DeviceAttribute: Equatable, Sendable {
    public var group: UInt32
    public var attribute: UInt64
    public var flags: UInt32 = 0

    public init(group: UInt32, attribute: UInt64, flags: UInt32 = 0) {
        self.group = group
        self.attribute = attribute
        self.flags = flags
    }

    /// KVM_DEV_VFIO_GROUP / KVM_DEV_VFIO_GROUP_ADD (KVM_DEV_VFIO_FILE_ADD in
    /// newer headers, same numbers): the value is a VFIO group or device
    /// descriptor (an Int32).
    public static let vfioFileAdd = DeviceAttribute(group: UInt32(KVM_DEV_VFIO_GROUP), attribute: UInt64(KVM_DEV_VFIO_GROUP_ADD))
    /// KVM_DEV_VFIO_GROUP / KVM_DEV_VFIO_GROUP_DEL (KVM_DEV_VFIO_FILE_DEL).
    public static let vfioFileDelete = DeviceAttribute(group: UInt32(KVM_DEV_VFIO_GROUP), attribute: UInt64(KVM_DEV_VFIO_GROUP_DEL))
}

/// A device made by KVM_CREATE_DEVICE: its own descriptor, configured
/// through attributes. The device keeps its VM alive; the kernel releases it
/// when its last descriptor closes.
public final class Device: Sendable {
    public let type: DeviceType
    /// The VM the device belongs to.
    public let vm: VirtualMachine
    let handle: KVMHandle

    init(type: DeviceType, vm: VirtualMachine, handle: KVMHandle) {
        self.type = type
        self.vm = vm
        self.handle = handle
    }

    /// The device's descriptor, for requests this API does not wrap.
    public var rawDescriptor: Int32 { handle.descriptor }

    /// Sets `attribute` from the bytes at `value` (what they are depends on
    /// the attribute; for the VFIO file attributes an Int32 descriptor).
    /// The ioctl is KVM_SET_DEVICE_ATTR.
    public func setAttribute(_ attribute: DeviceAttribute, value: UnsafeRawPointer?) throws(KVMError) {
        var raw = Self.kernelValue(attribute, value)
        try handle.call(.setDeviceAttr, &raw, context: "group \(attribute.group) attribute \(attribute.attribute)")
    }

    /// Sets a VFIO file attribute to `descriptor`. The ioctl is KVM_SET_DEVICE_ATTR.
    public func setAttribute(_ attribute: DeviceAttribute, descriptor: Int32) throws(KVMError) {
        var descriptor = descriptor
        try withUnsafeBytes(of: &descriptor) { (bytes) throws(KVMError) in
            try setAttribute(attribute, value: bytes.baseAddress)
        }
    }

    /// Reads `attribute` into the bytes at `value`. The ioctl is KVM_GET_DEVICE_ATTR.
    public func getAttribute(_ attribute: DeviceAttribute, into value: UnsafeMutableRawPointer?) throws(KVMError) {
        var raw = Self.kernelValue(attribute, value.map { UnsafeRawPointer($0) })
        try handle.call(.getDeviceAttr, &raw, context: "group \(attribute.group) attribute \(attribute.attribute)")
    }

    /// Whether the device has `attribute`: the kernel answers 0 when it does
    /// and ENXIO when it does not, which this turns into a Bool; other errors
    /// are thrown. The ioctl is KVM_HAS_DEVICE_ATTR.
    public func hasAttribute(_ attribute: DeviceAttribute) throws(KVMError) -> Bool {
        var raw = Self.kernelValue(attribute, nil)
        do {
            try handle.call(.hasDeviceAttr, &raw)
            return true
        } catch where error.errno == .noSuchAddressOrDevice {
            return false
        }
    }

    static func kernelValue(_ attribute: DeviceAttribute, _ value: UnsafeRawPointer?) -> kvm_device_attr {
        kvm_device_attr(flags: attribute.flags, group: attribute.group, attr: attribute.attribute,
                        addr: UInt64(UInt(bitPattern: value)))
    }
}

extension VirtualMachine {
    /// Creates a device of `type`. ENODEV when this KVM has no such device
    /// type; EBUSY for a second kvm-vfio device. The ioctl is KVM_CREATE_DEVICE.
    public func createDevice(_ type: DeviceType) throws(KVMError) -> Device {
        var request = kvm_create_device(type: type.rawValue, fd: 0, flags: 0)
        try handle.call(.createDevice, &request, context: "\(type)")
        return Device(type: type, vm: self, handle: KVMHandle(descriptor: Int32(bitPattern: request.fd), backend: handle.backend))
    }

    /// Whether this KVM can create a device of `type`, asked with
    /// KVM_CREATE_DEVICE_TEST (nothing is created): ENODEV becomes false.
    /// The ioctl is KVM_CREATE_DEVICE.
    public func canCreateDevice(_ type: DeviceType) throws(KVMError) -> Bool {
        var request = kvm_create_device(type: type.rawValue, fd: 0, flags: UInt32(KVM_CREATE_DEVICE_TEST))
        do {
            try handle.call(.createDevice, &request)
            return true
        } catch where error.errno == .operationNotSupportedByDevice {
            return false
        }
    }
}
